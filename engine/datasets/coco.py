"""COCO instances JSON: `ROOT/annotations/*.json` (every file with "images" and "annotations"), or one
JSON file passed as root.

Boxes come from `bbox` (x, y, w, h). Polygon segmentations become Polygons; RLE segmentations (crowd
regions, mask-based tools) are decoded with pycocotools and traced back to polygons with
cv2.findContours, so every reader hands out the same geometry type. Images are looked up next to the
JSON, in `images/`, `images/<split>/` and `<split>/` (split = the JSON name without "instances_").
The JSON name gives the split when it contains train/val/test.

Image label rule (all labelled formats): an image listed with at least one annotation is DEFECTIVE with
defect_type = the class of its first annotation; an image listed with none is GOOD (annotated, clean);
an image not listed in any JSON is not part of the dataset. Category ids become class names in id order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from engine.datasets.common import (
    add_capped,
    bounding_box,
    check_declared_size,
    clamp_box,
    finish,
    labelled_sample,
    no_categories,
    probe_size,
)
from engine.datasets.registry import register_format
from engine.datasets.types import Box, Dataset, LoadIssue, Polygon

# Detection reads the start of big files only: a 450 MB instances file must not be parsed twice.
_FULL_PARSE_LIMIT = 4 * 1024 * 1024
_HEAD_BYTES = 1024 * 1024


def _json_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix.lower() == ".json" else []
    ann = root / "annotations"
    return sorted(p for p in ann.glob("*.json") if p.is_file()) if ann.is_dir() else []


def _looks_like_coco(path: Path) -> bool:
    try:
        if path.stat().st_size <= _FULL_PARSE_LIMIT:
            data = json.loads(path.read_bytes())
            return isinstance(data, dict) and "images" in data and "annotations" in data
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    except (OSError, ValueError):
        return False
    return head.lstrip().startswith(b"{") and b'"images"' in head


def _split_of(json_path: Path) -> str:
    stem = json_path.stem.lower()
    for key, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if key in stem:
            return split
    return "unspecified"


def _image_dirs(json_path: Path) -> list[Path]:
    """Where COCO exports put the images, most conventional first (the first one names missing files)."""
    tag = json_path.stem.removeprefix("instances_")
    top, here = json_path.parent.parent, json_path.parent
    candidates = (top / "images" / tag, here / "images" / tag, top / "images", here / "images",
                  top / tag, here / tag, here, top)
    dirs: list[Path] = []
    for d in candidates:
        if d not in dirs and d.is_dir():
            dirs.append(d)
    return dirs


@register_format("coco", "COCO instances JSON (annotations/*.json with images, annotations, categories)")
class CocoReader:
    """COCO object-detection / instance-segmentation annotations."""

    name = "coco"

    def detect(self, root: Path) -> bool:
        return any(_looks_like_coco(p) for p in _json_files(root))

    def load(self, root: Path, category: str | None = None) -> Dataset:
        no_categories(root, "COCO", category)
        ds = Dataset(root=root, format=self.name)
        class_by_id: dict[int, str] = {}
        for json_path in _json_files(root):
            _load_json(json_path, ds, class_by_id)
        ds.class_names = [class_by_id[k] for k in sorted(class_by_id)]
        return finish(ds)


def _load_json(json_path: Path, ds: Dataset, class_by_id: dict[int, str]) -> None:
    issues = ds.issues
    try:
        data = json.loads(json_path.read_bytes())
    except (OSError, ValueError) as exc:
        issues.append(LoadIssue(json_path, f"not valid JSON ({exc})"))
        return
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        issues.append(LoadIssue(json_path, "not a COCO file (no 'images' list)"))
        return
    if "annotations" not in data:
        return  # e.g. image_info_test*.json: images without labels, nothing to say about them
    for cat in data.get("categories") or []:
        try:
            class_by_id.setdefault(int(cat["id"]), str(cat["name"]))
        except (KeyError, TypeError, ValueError):
            issues.append(LoadIssue(json_path, f"malformed category entry {cat!r:.80}"))

    anns_by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and "image_id" in ann:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        else:
            issues.append(LoadIssue(json_path, f"malformed annotation {ann!r:.80}"))

    dirs = _image_dirs(json_path)
    split = _split_of(json_path)
    missing: list[Path] = []
    known_ids: set[Any] = set()
    for entry in data["images"]:
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            issues.append(LoadIssue(json_path, f"malformed image entry {entry!r:.80}"))
            continue
        known_ids.add(entry["id"])
        rel = str(entry["file_name"]).replace("\\", "/")
        image = next((d / rel for d in dirs if (d / rel).is_file()), None)
        if image is None:
            missing.append((dirs[0] if dirs else json_path.parent) / rel)
            continue
        size = probe_size(image, issues)
        if size is None:
            continue
        declared = _declared_size(entry)
        check_declared_size(json_path, image, declared, size, issues)
        boxes, polygons, bad = _shapes(anns_by_image.get(entry["id"], []), class_by_id, size, json_path, issues)
        ds.samples.append(labelled_sample(image, boxes, polygons, split, uncertain=bad))
    add_capped(issues, missing, f"image listed in {json_path.name} not found", json_path)
    orphans = [k for k in anns_by_image if k not in known_ids]
    if orphans:
        issues.append(
            LoadIssue(json_path, f"annotations refer to {len(orphans)} unknown image ids (first: {orphans[0]!r})")
        )


def _declared_size(entry: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return int(entry["width"]), int(entry["height"])
    except (KeyError, TypeError, ValueError):
        return None


def _shapes(
    anns: list[dict[str, Any]], class_by_id: dict[int, str], size: tuple[int, int], json_path: Path,
    issues: list[LoadIssue],
) -> tuple[list[Box], list[Polygon], bool]:
    boxes: list[Box] = []
    polygons: list[Polygon] = []
    bad = False
    for ann in anns:
        try:
            name = class_by_id[int(ann["category_id"])]
            polys = _polygons(ann.get("segmentation"), size, name)
            bbox = ann.get("bbox")
            if bbox:
                x, y, w, h = (float(v) for v in bbox)
                box = Box(x, y, x + w, y + h, name)
            elif polys:
                box = bounding_box((p for poly in polys for p in poly.points), name)
            else:
                raise ValueError("neither bbox nor segmentation")
        except (KeyError, TypeError, ValueError) as exc:
            issues.append(LoadIssue(json_path, f"annotation id {ann.get('id')!r}: malformed ({exc})"))
            bad = True
            continue
        boxes.append(clamp_box(box, size))
        polygons.extend(polys)
    return boxes, polygons, bad


def _polygons(seg: Any, size: tuple[int, int], name: str) -> list[Polygon]:
    if not seg:
        return []
    if isinstance(seg, list):
        out = []
        for flat in seg:
            coords = [float(v) for v in flat]
            if len(coords) < 6 or len(coords) % 2:
                raise ValueError(f"polygon with {len(coords)} coordinates")
            out.append(Polygon(tuple(zip(coords[::2], coords[1::2], strict=True)), name))
        return out
    if isinstance(seg, dict) and "counts" in seg:
        h, w = (int(v) for v in seg.get("size") or (size[1], size[0]))
        try:
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            with warnings.catch_warnings():  # pycocotools' own numpy-2 DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
        except Exception as exc:  # pycocotools raises assorted types for corrupt RLE strings
            raise ValueError(f"undecodable RLE ({exc.__class__.__name__}: {exc})") from None
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return [
            Polygon(tuple((float(x), float(y)) for x, y in c.reshape(-1, 2)), name)
            for c in contours
            if len(c) >= 3
        ]
    raise ValueError("unknown segmentation type")

