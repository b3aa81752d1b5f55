"""Dataset writers: export a loaded `Dataset` to COCO, YOLO, Pascal VOC, labelme or MVTec AD.

Each writer registers itself by name, like the readers, and writes exactly the layout its reader in this
package reads back (`load_dataset(out, format=name)`), so every export is a round trip by construction.

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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from engine.datasets.imageio import read_mask
from engine.datasets.types import DEFECTIVE, GOOD, Box, Dataset, LoadIssue, Polygon, Sample
from engine.errors import DatasetError, ImageReadError
from engine.fsutil import atomic_swap_dir, staging_dir
from engine.geometry import polygons as geometry

# Edges of a box and of a polygon's bounding box closer than this are "the same box" (readers derive
# boxes as min/max of the points, traced masks as max + 1, YOLO rounds to 6 decimals).
_BOX_MATCH_PX = 1.01


# --------------------------------------------------------------------------------------------------
# Report and registry


@dataclass
class ExportReport:
    """What an export wrote, converted and skipped.

    files: source image path -> exported image path (final location), for every exported sample.
    skipped: samples that were not exported, each naming the file at fault.
    conversions: counts of geometry conversions and of samples the format could not express.
    """

    out: Path
    format: str
    images: int = 0
    annotations: int = 0
    files: dict[Path, Path] = field(default_factory=dict)
    skipped: list[LoadIssue] = field(default_factory=list)
    conversions: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def summary(self) -> str:
        conv = ", ".join(f"{k}: {v}" for k, v in sorted(self.conversions.items()))
        return (f"{self.format} -> {self.out}: {self.images} images, {self.annotations} annotations, "
                f"{len(self.skipped)} skipped" + (f" ({conv})" if conv else ""))


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
# What every writer shares: the prepared geometry of a sample, unique file names, image placement


@dataclass
class Shape:
    """One annotation to write: an outline (or None for a plain box) and its box."""

    polygon: Polygon | None
    box: Box

    @property
    def class_name(self) -> str:
        return self.box.class_name


@dataclass
class Item:
    """A sample ready to write: its image size and its geometry in the form writers need."""

    sample: Sample
    size: tuple[int, int]  # (width, height)
    depth: int
    shapes: list[Shape]
    from_mask: bool  # the shapes were traced from sample.mask_path


class ExportJob:
    """One export in progress: the writer's view of the dataset, the temp root and the report."""

    def __init__(self, dataset: Dataset, root: Path, final_root: Path, copy_images: bool,
                 report: ExportReport) -> None:
        self.dataset = dataset
        self.root = root
        self.final_root = final_root
        self.copy_images = copy_images
        self.report = report
        self._names: dict[Path, set[str]] = {}

    # -- samples ----------------------------------------------------------------------------------

    def items(self, need_shapes: bool = True) -> Iterable[Item]:
        """Every sample whose image (and mask) can be read; the others go to report.skipped."""
        for s in self.dataset.samples:
            try:
                w, h, depth = _image_info(s.image_path)
                shapes, from_mask = _shapes(s, (w, h)) if need_shapes else ([], False)
            except ImageReadError as exc:
                self.skip(exc.path, exc.reason)
                continue
            if from_mask:
                self.report.conversions["mask->polygons"] += 1
            yield Item(s, (w, h), depth, shapes, from_mask)

    def skip(self, path: Path, reason: str) -> None:
        self.report.skipped.append(LoadIssue(path, reason))

    def class_names(self, items: list[Item]) -> list[str]:
        """The dataset's class names in their order, then any class only the samples use."""
        names = list(self.dataset.class_names)
        for it in items:
            for sh in it.shapes:
                if sh.class_name not in names:
                    names.append(sh.class_name)
        return names

    # -- files ------------------------------------------------------------------------------------

    def unique_name(self, folder: Path, image: Path, suffix: str | None = None) -> str:
        """A file name unique in `folder` by stem (labels, XMLs and masks are matched by stem).

        Collisions (e.g. MVTec's 000.png in every defect folder) get the parent folder as prefix, then a
        counter; case-insensitive, so the export also works on Windows and macOS file systems.
        """
        used = self._names.setdefault(folder, set())
        ext = image.suffix if suffix is None else suffix
        stem = _safe(image.stem)
        candidates = [stem, f"{_safe(image.parent.name)}_{stem}"]
        candidates += [f"{stem}_{n}" for n in range(1, len(used) + 2)]
        for c in candidates:
            if c.lower() not in used:
                used.add(c.lower())
                return c + ext
        raise AssertionError("unreachable: the counter always yields a free name")

    def place_image(self, sample: Sample, folder: Path, name: str | None = None) -> Path:
        """Copy (or link) the sample's image into `folder`; returns the path written (under the temp root)."""
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / (name or self.unique_name(folder, sample.image_path))
        src = sample.image_path
        try:
            if self.copy_images:
                shutil.copyfile(src, dst)
            else:
                try:
                    os.symlink(os.path.abspath(src), dst)
                except OSError:
                    shutil.copyfile(src, dst)  # no symlink permission (Windows) or support
        except OSError as exc:
            raise DatasetError(f"{src}: cannot copy image to {dst} ({exc.__class__.__name__}: {exc})") from None
        self.report.images += 1
        self.report.files[src] = self.final_root / dst.relative_to(self.root)
        return dst

    def write_text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise DatasetError(f"{path}: cannot write ({exc})") from None


def _safe(name: str) -> str:
    """A file/folder name without path separators or control characters."""
    cleaned = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name).strip()
    return cleaned if cleaned not in ("", ".", "..") else "_"


def _image_info(path: Path) -> tuple[int, int, int]:
    """(width, height, channels) from the header; the error names the file like imageio.image_size."""
    try:
        with Image.open(path) as im:
            return im.size[0], im.size[1], len(im.getbands())
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageReadError(path, f"not a readable image ({exc.__class__.__name__}: {exc})") from None


def _shapes(s: Sample, size: tuple[int, int]) -> tuple[list[Shape], bool]:
    """The sample's annotations as (outline, box) pairs: given polygons first, else the traced mask."""
    from_mask = False
    if s.polygons:
        polygons = list(s.polygons)
    elif s.mask_path is not None:
        polygons = mask_to_polygons(read_mask(s.mask_path, (size[1], size[0])), _mask_class(s))
        from_mask = True
    else:
        polygons = []
    boxes = list(s.boxes)
    shapes: list[Shape] = []
    for poly in polygons:
        own = _polygon_box(poly, size, pixel=from_mask)
        match = next((b for b in boxes if b.class_name == poly.class_name and _same_box(b, own)), None)
        if match is not None:
            boxes.remove(match)  # keep the source's exact box; it was derived from this polygon
        shapes.append(Shape(poly, match or own))
    shapes.extend(Shape(None, b) for b in boxes)
    return shapes, from_mask


def _mask_class(s: Sample) -> str:
    if s.defect_type and s.defect_type != GOOD:
        return s.defect_type
    return s.class_names[0] if s.class_names else "defect"


def _polygon_box(poly: Polygon, size: tuple[int, int], pixel: bool) -> Box:
    """Bounding box; `pixel` (outline through pixel centres) makes the far edges exclusive (+1)."""
    xs = [p[0] for p in poly.points]
    ys = [p[1] for p in poly.points]
    extra = 1.0 if pixel else 0.0
    w, h = size
    return Box(max(min(xs), 0.0), max(min(ys), 0.0), min(max(xs) + extra, w), min(max(ys) + extra, h),
               poly.class_name)


def _same_box(a: Box, b: Box) -> bool:
    return all(abs(u - v) <= _BOX_MATCH_PX for u, v in zip(
        (a.x0, a.y0, a.x1, a.y1), (b.x0, b.y0, b.x1, b.y1), strict=True))


# --------------------------------------------------------------------------------------------------
# Geometry conversions (public: the tests and the GUI rasterise with the same conventions)


def mask_to_polygons(mask: np.ndarray, class_name: str = "defect") -> list[Polygon]:
    """The exact outlines of a binary mask as dataset Polygons (engine.geometry.polygons at fineness 0)."""
    return [Polygon(tuple((float(x), float(y)) for x, y in ring), class_name)
            for ring in geometry.mask_to_polygons(mask, fineness=0.0, min_area=0.0)]


def polygons_to_mask(polygons: Iterable[Polygon], size: tuple[int, int]) -> np.ndarray:
    """Binary H x W bool mask of dataset Polygons (`size` is (w, h)), by the one rasterisation rule."""
    w, h = size
    return geometry.polygons_to_mask([p.points for p in polygons], (h, w))


def boxes_to_mask(boxes: Iterable[Box], size: tuple[int, int]) -> np.ndarray:
    """Binary H x W bool mask of the boxes (x1, y1 exclusive, rounded to pixels)."""
    w, h = size
    mask = np.zeros((h, w), bool)
    for b in boxes:
        x0, y0 = max(round(b.x0), 0), max(round(b.y0), 0)
        x1, y1 = min(round(b.x1), w), min(round(b.y1), h)
        mask[y0:y1, x0:x1] = True
    return mask


def sample_mask(sample: Sample, size: tuple[int, int]) -> np.ndarray:
    """The finest geometry of a sample as a mask: mask file, else polygons, else boxes."""
    if sample.mask_path is not None:
        return read_mask(sample.mask_path, (size[1], size[0]))
    if sample.polygons:
        return polygons_to_mask(sample.polygons, size)
    return boxes_to_mask(sample.boxes, size)


def _polygon_area(points: tuple[tuple[float, float], ...]) -> float:
    xs = np.asarray([p[0] for p in points])
    ys = np.asarray([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _needs_record(job: ExportJob, it: Item) -> bool:
    """Whether the sample gets an annotation record; DEFECTIVE/UNKNOWN without geometry get none."""
    if it.shapes or it.sample.label == GOOD:
        return True
    key = "defective without geometry: unlabelled" if it.sample.label == DEFECTIVE else "unknown: unlabelled"
    job.report.conversions[key] += 1
    return False


_SPLIT_TAGS = {"train": "train", "validation": "val", "test": "test"}


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
            by_tag.setdefault(_SPLIT_TAGS.get(it.sample.split, "all"), []).append(it)
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
                    area = _polygon_area(sh.polygon.points) if sh.polygon else (b.x1 - b.x0) * (b.y1 - b.y0)
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
            tag = _SPLIT_TAGS.get(it.sample.split, "")
            img_dir = job.root / "images" / tag if tag else job.root / "images"
            lab_dir = job.root / "labels" / tag if tag else job.root / "labels"
            if tag not in tags:
                tags.append(tag)
            dst = job.place_image(it.sample, img_dir)
            if not _needs_record(job, it):
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
            tag = _SPLIT_TAGS.get(it.sample.split)
            if tag:
                split_ids.setdefault(tag, []).append(dst.stem)
            if not _needs_record(job, it):
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
            tag = _SPLIT_TAGS.get(it.sample.split)
            dst = job.place_image(it.sample, job.root / tag if tag else job.root)
            if not _needs_record(job, it):
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
            cat = job.root if single else job.root / _safe(s.category or "default")
            made.add(cat)
            good = s.label == GOOD
            split = s.split if s.split in ("train", "validation", "test") else ("train" if good else "test")
            cls = GOOD if good else _safe(_mask_class(s))
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
