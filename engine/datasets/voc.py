"""Pascal VOC XML: `Annotations/*.xml` + `JPEGImages/` (also `annotations/` + `images/`, as NEU-DET ships).

VOC coordinates are 1-based and inclusive, so a box (xmin, ymin, xmax, ymax) becomes
Box(xmin - 1, ymin - 1, xmax, ymax) in the 0-based, end-exclusive convention of Box (as detectron2 does),
clamped to the image. Splits come from `ImageSets/Main/{train,val,test}.txt` when present.

XML is parsed with xml.etree (defusedxml is not a dependency); files declaring a DOCTYPE or ENTITY are
refused as a LoadIssue, which rules out entity-expansion attacks, since annotation files never need them.

Image label rule (all labelled formats): an XML with at least one object is DEFECTIVE with
defect_type = the class of its first object; an XML with none is GOOD (annotated, clean); an image with
no XML, or whose XML is unusable, is UNKNOWN.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from engine.datasets.common import (
    check_declared_size,
    clamp_box,
    finish,
    labelled_sample,
    list_images,
    no_categories,
    probe_size,
    unlabelled_sample,
)
from engine.datasets.registry import register_format
from engine.datasets.types import Box, Dataset, LoadIssue, Sample
from engine.errors import DatasetError

LAYOUTS = (("Annotations", "JPEGImages"), ("annotations", "images"), ("Annotations", "images"))


def _dirs(root: Path) -> tuple[Path, Path] | None:
    for ann, img in LAYOUTS:
        if (root / ann).is_dir() and (root / img).is_dir():
            return root / ann, root / img
    return None


def _xml_files(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.name.lower().endswith(".xml") and e.is_file())
    except OSError:
        return []


def _splits(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        p = root / "ImageSets" / "Main" / f"{name}.txt"
        try:
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines() if p.is_file() else []
        except OSError:
            lines = []  # an unreadable split list only loses the split names, not the dataset
        for line in lines:
            if line.split():
                out.setdefault(line.split()[0], split)
    return out


@register_format("voc", "Pascal VOC XML: Annotations/*.xml + JPEGImages/ (or annotations/ + images/)")
class VocReader:
    """Pascal VOC bounding-box annotations."""

    name = "voc"

    def detect(self, root: Path) -> bool:
        dirs = _dirs(root) if root.is_dir() else None
        if dirs is None:
            return False
        with os.scandir(dirs[0]) as it:
            return any(e.name.lower().endswith(".xml") for e in it)

    def load(self, root: Path, category: str | None = None) -> Dataset:
        no_categories(root, "VOC", category)
        dirs = _dirs(root)
        if dirs is None:
            raise DatasetError(f"{root}: no Annotations/ + JPEGImages/ (or annotations/ + images/) folders")
        ann_dir, img_dir = dirs
        ds = Dataset(root=root, format=self.name)
        images = list_images(img_dir)
        by_name = {p.name: p for p in images}
        by_stem: dict[str, Path] = {}
        for p in images:
            by_stem.setdefault(p.stem, p)
        splits = _splits(root)
        done: set[Path] = set()
        classes: set[str] = set()
        for xml in _xml_files(ann_dir):
            image, sample = _load_xml(xml, img_dir, by_name, by_stem, splits, ds.issues)
            if image is None:
                continue
            if image in done:
                ds.issues.append(LoadIssue(xml, f"{image.name} is already annotated by another XML; ignored"))
                continue
            done.add(image)
            if sample is not None:
                classes.update(sample.class_names)
                ds.samples.append(sample)
        for img in images:
            if img not in done and probe_size(img, ds.issues) is not None:
                ds.samples.append(unlabelled_sample(img, splits.get(img.stem, "unspecified")))
        ds.class_names = sorted(classes)
        return finish(ds)


def _load_xml(
    xml: Path, img_dir: Path, by_name: dict[str, Path], by_stem: dict[str, Path], splits: dict[str, str],
    issues: list[LoadIssue],
) -> tuple[Path | None, Sample | None]:
    """(the image the XML belongs to, its sample); the sample is None when the image is unreadable."""
    try:
        raw = xml.read_bytes()
        if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
            raise ValueError("DOCTYPE/ENTITY declarations are not allowed in annotation files")
        tree = ET.fromstring(raw)
    except (OSError, ValueError, ET.ParseError) as exc:
        issues.append(LoadIssue(xml, f"unreadable XML ({exc})"))
        return None, None  # its image, if any, still loads as UNKNOWN with the unannotated ones
    filename = (tree.findtext("filename") or "").strip()
    # The XML's own name is the VOC image id; <filename> goes stale when tools rename images.
    image = by_stem.get(xml.stem) or by_name.get(filename) or by_stem.get(Path(filename).stem)
    if image is None:
        issues.append(LoadIssue(xml, f"image '{filename or xml.stem}' not found in {img_dir}"))
        return None, None
    size = probe_size(image, issues)
    if size is None:
        return image, None
    check_declared_size(xml, image, _declared_size(tree), size, issues)
    boxes: list[Box] = []
    bad = False
    for i, obj in enumerate(tree.findall("object"), start=1):
        try:
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if not name or bb is None:
                raise ValueError("no name or bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            issues.append(LoadIssue(xml, f"object {i}: malformed ({exc})"))
            bad = True
            continue
        boxes.append(clamp_box(Box(x0 - 1, y0 - 1, x1, y1, name), size))
    return image, labelled_sample(image, boxes, [], splits.get(image.stem, "unspecified"), uncertain=bad)


def _declared_size(tree: ET.Element) -> tuple[int, int] | None:
    try:
        return int(float(tree.findtext("size/width") or "")), int(float(tree.findtext("size/height") or ""))
    except ValueError:
        return None
