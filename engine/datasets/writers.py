"""Dataset writers: export a loaded `Dataset` to COCO, YOLO, Pascal VOC, labelme or MVTec AD.

Each writer registers itself by name, like the readers, and writes exactly the layout its reader in this
package reads back (`load_dataset(out, format=name)`), so every export is a round trip by construction.

What every writer shares (the report, `ExportJob`, the geometry conversions) is in engine.datasets.export_job.

Geometry conversion (only where the target format needs what a sample lacks):

* mask <-> polygons: engine.geometry.polygons, the one owner of that geometry (the annotation document,
  the segmenter and its training use the same rule). Masks are traced exactly (vertices on the centres of
  boundary pixels); a hole inside a defect is joined to its outline by a zero-width cut, because `Polygon`
  (and labelme / YOLO / COCO polygons) have no notion of holes; one- or two-pixel regions are walked there
  and back so every format gets at least three vertices. Rasterising gives back the same pixels.
* boxes -> mask (MVTec): filled rectangles, only for samples with neither a mask nor polygons; the
  report counts them, since a box mask is coarser than the defect.
* polygons -> boxes (VOC, COCO bbox): the polygon's bounding box (for traced masks the pixel-exact,
  end-exclusive box). A source box that is just the bounding box of a polygon of the same class (as the
  readers produce alongside every polygon) is not written a second time.

Samples that a format cannot express are never silently relabelled: a DEFECTIVE sample without any
geometry is written without an annotation record (UNKNOWN on reload) in YOLO / VOC / labelme, and left
out of COCO and MVTec (which cannot say "unknown"); UNKNOWN samples likewise. Each such case is counted in
`ExportReport.conversions`; a sample whose image or mask cannot be read lands in `ExportReport.skipped`
with its file name, and the export goes on.

Writes are safe: a non-empty target is refused unless `overwrite=True` (which replaces the folder as a
whole), the target may not be or contain the source images, and everything is written into a temporary
sibling folder that is renamed into place only when the export finished, so a failed export leaves no
half-written dataset behind. Images are copied byte for byte (no re-encoding), or symlinked with
`copy_images=False` (falling back to a copy where links are not possible).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from engine.datasets.export_job import (
    SPLIT_TAGS,
    ExportJob,
    ExportReport,
    Item,
    boxes_to_mask,
    mask_class,
    needs_record,
    polygon_area,
    polygons_to_mask,
    safe_name,
)
from engine.datasets.imageio import read_mask
from engine.datasets.types import DEFECTIVE, GOOD, Dataset, Sample
from engine.errors import DatasetError, ImageReadError
from engine.fsutil import atomic_swap_dir, staging_dir

# --------------------------------------------------------------------------------------------------
# Report and registry


class DatasetWriter(Protocol):
    """A dataset format that can be written."""

    name: str
    description: str

    def write(self, job: ExportJob) -> None: ...


_WRITERS: dict[str, DatasetWriter] = {}


def register_writer(name: str, description: str = "") -> Callable[[type], type]:
    """Class decorator: instantiate the writer and register it under `name` (the reader's name)."""

    def decorate(cls: type) -> type:
        writer = cls()
        writer.name = name
        doc_lines = (cls.__doc__ or "").strip().splitlines()
        writer.description = description or (doc_lines[0] if doc_lines else name)
        _WRITERS[name] = writer
        return cls

    return decorate


def writer_formats() -> dict[str, DatasetWriter]:
    return dict(_WRITERS)


def get_writer(name: str) -> DatasetWriter:
    try:
        return _WRITERS[name]
    except KeyError:
        raise DatasetError(f"no writer for format '{name}'; known: {', '.join(sorted(_WRITERS))}") from None


def export_dataset(
    dataset: Dataset, out: str | Path, format: str, copy_images: bool = True, overwrite: bool = False
) -> ExportReport:
    """Write `dataset` to `out` in `format`; the source dataset is only read, never changed."""
    writer = get_writer(format)
    out = Path(out).expanduser().absolute()
    _check_target(dataset, out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed at the end: same filesystem, so the rename is atomic.
    tmp = staging_dir(out)
    report = ExportReport(out=out, format=format)
    try:
        writer.write(ExportJob(dataset, tmp, out, copy_images, report))
        # _check_target has decided whether `out` may be replaced (overwrite=True), so no marker guard here.
        atomic_swap_dir(tmp, out, marker=None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _check_target(dataset: Dataset, out: Path, overwrite: bool) -> None:
    real_out = Path(os.path.realpath(out))
    src_root = Path(os.path.realpath(dataset.root))
    if real_out == src_root or _is_within(src_root, real_out) or _is_within(real_out, src_root):
        raise DatasetError(f"{out}: export target overlaps the source dataset {dataset.root}")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: export target exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out}: export target is not empty (pass overwrite=True, or --overwrite on the command line, to replace it)")
        # Replacing the folder must not delete images the export is about to read.
        for s in dataset.samples:
            if _is_within(Path(os.path.realpath(s.image_path)), real_out):
                raise DatasetError(f"{out}: cannot overwrite, it holds source image {s.image_path}")


def _is_within(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


# --------------------------------------------------------------------------------------------------
# Writers


@register_writer("coco", "COCO instances JSON per split: annotations/instances_<split>.json + images/<split>/")
class CocoWriter:
    """COCO boxes with polygon segmentations; one JSON per split (instances_all.json when unsplit)."""

    def write(self, job: ExportJob) -> None:
        items = list(job.items())
        names = job.class_names(items)
        cat_id = {n: i for i, n in enumerate(names, start=1)}
        by_tag: dict[str, list[Item]] = {}
        for it in items:
            if not it.shapes and it.sample.label != GOOD:
                # An image listed in COCO without annotations means GOOD; it cannot say "unknown".
                job.report.conversions["not expressible in coco: left out"] += 1
                continue
            by_tag.setdefault(SPLIT_TAGS.get(it.sample.split, "all"), []).append(it)
        ann_id = 0
        for tag, group in by_tag.items():
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for image_id, it in enumerate(group, start=1):
                dst = job.place_image(it.sample, job.root / "images" / tag)
                images.append({"id": image_id, "file_name": dst.name, "width": it.size[0], "height": it.size[1]})
                for sh in it.shapes:
                    ann_id += 1
                    b = sh.box
                    seg = [[v for p in sh.polygon.points for v in p]] if sh.polygon else []
                    area = polygon_area(sh.polygon.points) if sh.polygon else (b.x1 - b.x0) * (b.y1 - b.y0)
                    anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[sh.class_name],
                                 "bbox": [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0], "segmentation": seg,
                                 "area": area, "iscrowd": 0})
            job.report.annotations += len(anns)
            doc = {"info": {"description": f"exported by DefectScope from {job.dataset.root}"},
                   "images": images, "annotations": anns,
                   "categories": [{"id": i, "name": n, "supercategory": "defect"} for n, i in cat_id.items()]}
            job.write_text(job.root / "annotations" / f"instances_{tag}.json", json.dumps(doc))


@register_writer("yolo", "YOLO txt labels: images/<split>/ + labels/<split>/ and data.yaml")
class YoloWriter:
    """YOLO labels: polygons as segmentation lines, plain boxes as detection lines; empty .txt = GOOD.

    A file may mix both line kinds when a sample has polygons and unrelated boxes (the reader and
    Ultralytics' detection mode accept it; Ultralytics' segmentation mode wants polygons only).
    """

    def write(self, job: ExportJob) -> None:
        items = list(job.items())
        names = job.class_names(items)
        cls_id = {n: i for i, n in enumerate(names)}
        tags: list[str] = []
        for it in items:
            tag = SPLIT_TAGS.get(it.sample.split, "")
            img_dir = job.root / "images" / tag if tag else job.root / "images"
            lab_dir = job.root / "labels" / tag if tag else job.root / "labels"
            if tag not in tags:
                tags.append(tag)
            dst = job.place_image(it.sample, img_dir)
            if not needs_record(job, it):
                continue  # no .txt: UNKNOWN on reload, never a fake GOOD
            w, h = it.size
            lines = []
            for sh in it.shapes:
                if sh.polygon is not None:
                    coords = " ".join(f"{x / w:.6f} {y / h:.6f}" for x, y in sh.polygon.points)
                else:
                    b = sh.box
                    coords = (f"{(b.x0 + b.x1) / 2 / w:.6f} {(b.y0 + b.y1) / 2 / h:.6f} "
                              f"{(b.x1 - b.x0) / w:.6f} {(b.y1 - b.y0) / h:.6f}")
                lines.append(f"{cls_id[sh.class_name]} {coords}")
            job.report.annotations += len(lines)
            job.write_text(lab_dir / (dst.stem + ".txt"), "".join(line + "\n" for line in lines))
        (job.root / "labels").mkdir(parents=True, exist_ok=True)  # the reader needs it even when all are UNKNOWN
        job.write_text(job.root / "data.yaml", _data_yaml(names, tags))


def _data_yaml(names: list[str], tags: list[str]) -> str:
    def where(tag: str) -> str:
        return f"images/{tag}" if tag in tags else ("images" if "" in tags else f"images/{tags[0]}")

    lines = ["# exported by DefectScope", "path: .", f"train: {where('train')}", f"val: {where('val')}"]
    if "test" in tags:
        lines.append("test: images/test")
    lines.append(f"nc: {len(names)}")
    lines.append("names:")
    # Mapping form, one name per line: names with commas or brackets stay intact; quoted when YAML
    # would otherwise misread them (leading special characters, ": ", " #").
    for i, n in enumerate(names):
        plain = re.fullmatch(r"[A-Za-z0-9_][\w .\-()]*", n) and not n.endswith(" ")
        lines.append(f"  {i}: {n}" if plain else f"  {i}: '{n}'")
    return "\n".join(lines) + "\n"


@register_writer("voc", "Pascal VOC XML: Annotations/*.xml + JPEGImages/ + ImageSets/Main/<split>.txt")
class VocWriter:
    """Pascal VOC boxes (1-based, inclusive, whole pixels); polygons and masks become their boxes."""

    def write(self, job: ExportJob) -> None:
        split_ids: dict[str, list[str]] = {}
        for it in job.items():
            dst = job.place_image(it.sample, job.root / "JPEGImages")
            tag = SPLIT_TAGS.get(it.sample.split)
            if tag:
                split_ids.setdefault(tag, []).append(dst.stem)
            if not needs_record(job, it):
                continue  # no XML: UNKNOWN on reload
            if any(sh.polygon is not None for sh in it.shapes):
                job.report.conversions["polygons->boxes"] += 1
            job.report.annotations += len(it.shapes)
            job.write_text(job.root / "Annotations" / (dst.stem + ".xml"), _voc_xml(it, dst.name))
        (job.root / "Annotations").mkdir(parents=True, exist_ok=True)
        (job.root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        for tag, ids in split_ids.items():
            job.write_text(job.root / "ImageSets" / "Main" / f"{tag}.txt", "".join(i + "\n" for i in ids))


def _voc_xml(it: Item, filename: str) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", it.size[0]), ("height", it.size[1]), ("depth", it.depth)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    w, h = it.size
    for sh in it.shapes:
        b = sh.box
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = sh.class_name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        # Box is 0-based end-exclusive; VOC is 1-based inclusive: x0 -> x0 + 1, x1 -> x1 (as the reader).
        x0, y0 = min(max(round(b.x0), 0), w - 1), min(max(round(b.y0), 0), h - 1)
        x1, y1 = max(min(round(b.x1), w), x0 + 1), max(min(round(b.y1), h), y0 + 1)
        for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


@register_writer("labelme", "labelme JSON: one <image>.json beside each image, in <split>/ folders")
class LabelmeWriter:
    """labelme shapes: polygons as "polygon", plain boxes as "rectangle"; no JSON = UNKNOWN."""

    def write(self, job: ExportJob) -> None:
        for it in job.items():
            tag = SPLIT_TAGS.get(it.sample.split)
            dst = job.place_image(it.sample, job.root / tag if tag else job.root)
            if not needs_record(job, it):
                continue
            shapes = []
            for sh in it.shapes:
                if sh.polygon is not None:
                    pts, kind = [list(p) for p in sh.polygon.points], "polygon"
                else:
                    b = sh.box
                    pts, kind = [[b.x0, b.y0], [b.x1, b.y1]], "rectangle"
                shapes.append({"label": sh.class_name, "points": pts, "group_id": None, "description": "",
                               "shape_type": kind, "flags": {}})
            job.report.annotations += len(shapes)
            doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": dst.name, "imageData": None,
                   "imageHeight": it.size[1], "imageWidth": it.size[0]}
            job.write_text(dst.with_suffix(".json"), json.dumps(doc, indent=1))


@register_writer("mvtec", "MVTec AD folders: <category>/train/good, test/<defect>, ground_truth/<defect>")
class MVTecWriter:
    """MVTec AD layout with PNG masks (0/255) named <stem>_mask.png.

    Split folders are kept (train/validation/test); samples without a split go to train/good (GOOD) or
    test/<defect> (DEFECTIVE). One category folder per Sample.category; without categories the target
    itself is the category folder. UNKNOWN samples cannot be expressed and are left out (counted).
    """

    def write(self, job: ExportJob) -> None:
        cats = {s.category for s in job.dataset.samples}
        single = cats == {None} or len(cats) <= 1
        made: set[Path] = set()
        for it in job.items(need_shapes=False):
            s = it.sample
            if s.label not in (GOOD, DEFECTIVE):
                job.report.conversions["unknown: left out of mvtec"] += 1
                continue
            cat = job.root if single else job.root / safe_name(s.category or "default")
            made.add(cat)
            good = s.label == GOOD
            split = s.split if s.split in ("train", "validation", "test") else ("train" if good else "test")
            cls = GOOD if good else safe_name(mask_class(s))
            if cls == GOOD and not good:
                cls = "defect"  # a defective image in the good folder would read back as GOOD
            mask = None if good else self._mask(job, s, it.size)
            if mask is False:
                continue  # unreadable mask: already in report.skipped
            dst = job.place_image(s, cat / split / cls)
            if isinstance(mask, np.ndarray):
                path = cat / "ground_truth" / cls / f"{dst.stem}_mask.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255):
                    raise DatasetError(f"{path}: cannot write mask")
                job.report.annotations += 1
            elif not good:
                job.report.conversions["defective without geometry: no mask"] += 1
        for cat in made or {job.root}:
            # The reader recognises a category by train/good + test/ even when one of them is empty.
            (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
            (cat / "test").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _mask(job: ExportJob, s: Sample, size: tuple[int, int]) -> np.ndarray | bool | None:
        """The sample's mask (finest geometry first), None without geometry, False if unreadable."""
        try:
            if s.mask_path is not None and not s.polygons:
                return read_mask(s.mask_path, (size[1], size[0]))
        except ImageReadError as exc:
            job.skip(exc.path, exc.reason)
            return False
        if s.polygons:
            job.report.conversions["polygons->mask"] += 1
            return polygons_to_mask(s.polygons, size)
        if s.boxes:
            job.report.conversions["boxes->mask"] += 1
            return boxes_to_mask(s.boxes, size)
        return None
