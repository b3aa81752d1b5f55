"""Annotations being drawn on one image: shapes, an undo/redo history, and saving as you go (no Qt).

Shapes are boxes, polygons and painted masks (brush/eraser, and masks proposed by the promptable segmenter),
each with a class label. Masks are kept as COCO RLE so a history of hundreds of brush strokes stays small.
Every edit is written to disk before the call returns: a crash loses nothing already drawn.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from engine.datasets.imageio import image_size, read_mask
from engine.datasets.keys import sample_key
from engine.datasets.types import DEFECTIVE, GOOD, Box, Dataset, Polygon, Sample
from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text
from engine.geometry.polygons import mask_to_polygons, polygons_to_mask
from engine.home import default_data_home

ShapeKind = Literal["box", "polygon", "mask"]
FILE_VERSION = 1
MAX_HISTORY = 200


class AnnotationError(DefectScopeError):
    pass


@dataclass
class Shape:
    kind: ShapeKind
    class_name: str
    points: list[list[float]] = field(default_factory=list)  # box: [[x0, y0], [x1, y1]]; polygon: vertices
    rle: dict | None = None  # mask shapes: COCO RLE ({"size": [h, w], "counts": str})
    source: str = "manual"  # manual | segmenter | auto-prompt | copied | dataset (its own label) | detector
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The shape's pixels as a bool H x W mask."""
        h, w = shape
        if self.kind == "mask" and self.rle is not None:
            return mask_utils.decode(_decode_rle(self.rle)).astype(bool)
        if self.kind == "polygon":
            # The one rasterisation rule: the pixels the export and the segmenter training see too.
            return polygons_to_mask([self.points], (h, w)) if len(self.points) >= 3 else np.zeros((h, w), bool)
        out = np.zeros((h, w), np.uint8)
        pts = np.round(np.asarray(self.points, np.float64)).astype(np.int32)
        if self.kind == "box" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), 1, thickness=-1)
        return out.astype(bool)


def encode_mask(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _decode_rle(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str)
            else rle["counts"]}


@dataclass
class ImageAnnotations:
    key: str
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"version": FILE_VERSION, "key": self.key, "width": self.width, "height": self.height,
                "shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, data: dict, path: Path) -> ImageAnnotations:
        try:
            if data.get("version") != FILE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {FILE_VERSION}")
            shapes = [Shape(**s) for s in data["shapes"]]
            for s in shapes:
                if s.kind not in ("box", "polygon", "mask"):
                    raise ValueError(f"unknown shape kind {s.kind!r}")
            return cls(str(data["key"]), int(data["width"]), int(data["height"]), shapes)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"{path}: not a DefectScope annotation file ({exc})") from None

    def geometry(self) -> tuple[list[Box], list[Polygon], np.ndarray | None]:
        """What the dataset writers take: boxes, polygons (masks traced to outlines) and the union mask."""
        boxes, polygons = [], []
        union = np.zeros((self.height, self.width), bool)
        for s in self.shapes:
            m = s.mask((self.height, self.width))
            union |= m
            if s.kind == "box":
                (x0, y0), (x1, y1) = np.min(s.points, axis=0), np.max(s.points, axis=0)
                boxes.append(Box(float(x0), float(y0), float(x1), float(y1), s.class_name))
            elif s.kind == "polygon":
                polygons.append(Polygon(tuple((float(x), float(y)) for x, y in s.points), s.class_name))
            else:
                # Traced exactly (holes kept by zero-width cuts), so the export rasterises back to this mask.
                polygons += [Polygon(tuple((float(x), float(y)) for x, y in ring), s.class_name)
                             for ring in mask_to_polygons(m, fineness=0.0, min_area=0.0)]
        return boxes, polygons, (union if union.any() else None)


class AnnotationStore:
    """One JSON file per annotated image, in the data home (datasets may be read-only), written atomically."""

    def __init__(self, dataset_root: Path, folder: Path | None = None) -> None:
        digest = hashlib.sha1(str(Path(dataset_root).resolve()).encode()).hexdigest()[:16]
        self.folder = folder or default_data_home() / "annotations" / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "dataset.json").write_text(json.dumps({"dataset": str(Path(dataset_root).resolve())}))

    def path(self, key: str) -> Path:
        return self.folder / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".json")

    def load(self, key: str, width: int, height: int, seed: Sample | None = None) -> ImageAnnotations:
        """The image's annotations; an image never edited here starts from `seed`'s own labels (dataset_shapes),
        so the first drawn or accepted shape is added to them and an export never drops the dataset's labels."""
        path = self.path(key)
        if not path.exists():
            return ImageAnnotations(key, width, height, dataset_shapes(seed, (height, width)) if seed else [])
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AnnotationError(f"{path}: unreadable annotation file ({exc})") from None
        return ImageAnnotations.from_json(data, path)

    def save(self, ann: ImageAnnotations) -> None:
        atomic_write_text(self.path(ann.key), json.dumps(ann.to_json()))

    def annotated_keys(self) -> list[str]:
        keys = []
        for p in self.folder.glob("*.json"):
            if p.name == "dataset.json":
                continue
            try:
                keys.append(json.loads(p.read_text())["key"])
            except (OSError, json.JSONDecodeError, KeyError):
                continue
        return sorted(keys)


def dataset_shapes(sample: Sample, shape: tuple[int, int]) -> list[Shape]:
    """A sample's own labels as editable shapes (source "dataset"): its boxes, its polygons, and its mask when it
    has no polygons (formats with polygons give the mask from them). A mask that cannot be read is an
    AnnotationError naming it: editing the image without it would drop it from the exports."""
    out = [Shape("box", b.class_name, [[b.x0, b.y0], [b.x1, b.y1]], source="dataset") for b in sample.boxes]
    out += [Shape("polygon", p.class_name, [[float(x), float(y)] for x, y in p.points], source="dataset")
            for p in sample.polygons if len(p.points) >= 3]
    if sample.mask_path is not None and not sample.polygons:
        try:
            mask = read_mask(sample.mask_path, shape)
        except DefectScopeError as exc:
            raise AnnotationError(f"{exc} (the image's own label; fix it before annotating)") from None
        if mask.any():
            name = sample.defect_type if sample.defect_type and sample.defect_type != "good" else "defect"
            out.append(Shape("mask", name, rle=encode_mask(mask), source="dataset"))
    return out


class AnnotationEditor:
    """Edits one image's annotations with undo/redo; each edit is saved before it returns."""

    def __init__(self, store: AnnotationStore, ann: ImageAnnotations) -> None:
        self.store = store
        self.ann = ann
        self._undo: list[list[Shape]] = []
        self._redo: list[list[Shape]] = []

    @property
    def shapes(self) -> list[Shape]:
        return self.ann.shapes

    def _commit(self, before: list[Shape]) -> None:
        self._undo.append(before)
        del self._undo[:-MAX_HISTORY]
        self._redo.clear()
        self.store.save(self.ann)

    def _edit(self) -> list[Shape]:
        return copy.deepcopy(self.ann.shapes)

    def add_box(self, x0: float, y0: float, x1: float, y1: float, class_name: str, source: str = "manual") -> Shape:
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise AnnotationError("a box needs a width and a height of at least one pixel")
        return self._add(Shape("box", class_name, [[x0, y0], [x1, y1]], source=source))

    def add_polygon(self, points: list[tuple[float, float]], class_name: str, source: str = "manual") -> Shape:
        if len(points) < 3:
            raise AnnotationError("a polygon needs at least three points")
        return self._add(Shape("polygon", class_name, [[float(x), float(y)] for x, y in points], source=source))

    def add_polygons(self, polygons: list[list[tuple[float, float]]], class_name: str,
                     source: str = "segmenter") -> list[Shape]:
        """Several outlines as one edit (one undo step): a proposal traced to polygons."""
        shapes = [Shape("polygon", class_name, [[float(x), float(y)] for x, y in pts], source=source)
                  for pts in polygons if len(pts) >= 3]
        if not shapes:
            raise AnnotationError("no outline with at least three points")
        before = self._edit()
        self.ann.shapes.extend(shapes)
        self._commit(before)
        return shapes

    def add_mask(self, mask: np.ndarray, class_name: str, source: str = "segmenter") -> Shape:
        if mask.shape != (self.ann.height, self.ann.width):
            raise AnnotationError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the image {self.ann.width}x{self.ann.height}")
        if not mask.any():
            raise AnnotationError("the mask is empty")
        return self._add(Shape("mask", class_name, rle=encode_mask(mask), source=source))

    def _add(self, shape: Shape) -> Shape:
        before = self._edit()
        self.ann.shapes.append(shape)
        self._commit(before)
        return shape

    def remove(self, shape_id: str) -> None:
        before = self._edit()
        self.ann.shapes = [s for s in self.ann.shapes if s.id != shape_id]
        self._commit(before)

    def set_class(self, shape_id: str, class_name: str) -> None:
        before = self._edit()
        for s in self.ann.shapes:
            if s.id == shape_id:
                s.class_name = class_name
        self._commit(before)

    def paint(self, points: list[tuple[float, float]], radius: float, class_name: str, erase: bool = False) -> None:
        """One brush (or eraser) stroke through `points`: a round brush of `radius` pixels.

        Painting adds to this class's painted mask (made on first use); erasing removes the stroke from every
        painted mask, and masks left empty disappear. Boxes and polygons are not touched by the eraser.
        """
        h, w = self.ann.height, self.ann.width
        stroke = np.zeros((h, w), np.uint8)
        pts = np.round(np.asarray(points, np.float64)).astype(np.int32).reshape(-1, 2)
        r = max(1, round(radius))
        if len(pts) == 1:
            cv2.circle(stroke, tuple(int(v) for v in pts[0]), r, 1, thickness=-1)
        else:
            cv2.polylines(stroke, [pts], False, 1, thickness=2 * r, lineType=cv2.LINE_8)
            for p in (pts[0], pts[-1]):
                cv2.circle(stroke, (int(p[0]), int(p[1])), r, 1, thickness=-1)
        stroke_b = stroke.astype(bool)
        before = self._edit()
        if erase:
            kept = []
            for s in self.ann.shapes:
                if s.kind == "mask" and s.rle is not None:
                    m = mask_utils.decode(_decode_rle(s.rle)).astype(bool) & ~stroke_b
                    if not m.any():
                        continue
                    s.rle = encode_mask(m)
                kept.append(s)
            self.ann.shapes = kept
        else:
            target = next((s for s in self.ann.shapes
                           if s.kind == "mask" and s.class_name == class_name and s.source == "brush"), None)
            if target is None:
                self.ann.shapes.append(Shape("mask", class_name, rle=encode_mask(stroke_b), source="brush"))
            else:
                target.rle = encode_mask(mask_utils.decode(_decode_rle(target.rle)).astype(bool) | stroke_b)
        self._commit(before)

    def copy_from(self, other: ImageAnnotations) -> int:
        """Copy the shapes drawn on another image (e.g. the previous image's, for a fixture seen in every part);
        its own dataset labels stay with it (they are that image's defects)."""
        if (other.width, other.height) != (self.ann.width, self.ann.height):
            raise AnnotationError(f"cannot copy labels from a {other.width}x{other.height} image to a "
                                  f"{self.ann.width}x{self.ann.height} one")
        drawn = [s for s in other.shapes if s.source != "dataset"]
        before = self._edit()
        for s in copy.deepcopy(drawn):
            s.id = uuid.uuid4().hex[:12]
            s.source = "copied"
            self.ann.shapes.append(s)
        self._commit(before)
        return len(drawn)

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        if not self._undo:
            return False
        self._redo.append(self._edit())
        self.ann.shapes = self._undo.pop()
        self.store.save(self.ann)
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._undo.append(self._edit())
        self.ann.shapes = self._redo.pop()
        self.store.save(self.ann)
        return True


def annotated_dataset(ds: Dataset, store: AnnotationStore) -> Dataset:
    """The dataset with its images' drawn annotations as their labels, ready for engine.datasets.writers.

    An image with shapes becomes DEFECTIVE (defect type = its first shape's class) with the shapes as boxes and
    polygons (painted masks traced to outlines); images never annotated keep their original labels. An annotation
    file holds the image's own labels too (AnnotationStore.load seeds it with them), so it replaces them whole.
    """
    samples = []
    for s in ds.samples:
        key = sample_key(ds.root, s)
        path = store.path(key)
        if not path.exists():
            samples.append(s)
            continue
        width, height = image_size(s.image_path)
        ann = store.load(key, width, height)
        boxes, polygons, _ = ann.geometry()
        classes = [sh.class_name for sh in ann.shapes]
        samples.append(dataclasses.replace(
            s, boxes=boxes, polygons=polygons, mask_path=None, class_names=sorted(set(classes)),
            label=DEFECTIVE if ann.shapes else GOOD, defect_type=classes[0] if classes else "good"))
    names = sorted({n for s in samples for n in s.class_names} | set(ds.class_names))
    return dataclasses.replace(ds, samples=samples, class_names=names)
