"""What every dataset writer shares: the export report, an export in progress (`ExportJob`: samples with their
geometry prepared as the formats need it, unique file names, image placement) and the geometry conversions.

The writers themselves and their registry are in engine.datasets.writers; the mask <-> polygon rule is
engine.geometry.polygons' (one rule for annotation, export, the segmenter and its training).
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.datasets.imageio import read_mask
from engine.datasets.types import DEFECTIVE, GOOD, Box, Dataset, LoadIssue, Polygon, Sample
from engine.errors import DatasetError, ImageReadError
from engine.geometry import polygons as geometry

# Edges of a box and of a polygon's bounding box closer than this are "the same box" (readers derive
# boxes as min/max of the points, traced masks as max + 1, YOLO rounds to 6 decimals).
_BOX_MATCH_PX = 1.01

# Split folder names of the formats that name splits (COCO, YOLO, VOC, labelme).
SPLIT_TAGS = {"train": "train", "validation": "val", "test": "test"}


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
        stem = safe_name(image.stem)
        candidates = [stem, f"{safe_name(image.parent.name)}_{stem}"]
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


def safe_name(name: str) -> str:
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
        polygons = mask_to_polygons(read_mask(s.mask_path, (size[1], size[0])), mask_class(s))
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


def mask_class(s: Sample) -> str:
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


def polygon_area(points: tuple[tuple[float, float], ...]) -> float:
    xs = np.asarray([p[0] for p in points])
    ys = np.asarray([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def needs_record(job: ExportJob, it: Item) -> bool:
    """Whether the sample gets an annotation record; DEFECTIVE/UNKNOWN without geometry get none."""
    if it.shapes or it.sample.label == GOOD:
        return True
    key = "defective without geometry: unlabelled" if it.sample.label == DEFECTIVE else "unknown: unlabelled"
    job.report.conversions[key] += 1
    return False
