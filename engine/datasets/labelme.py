"""labelme JSON: one `<name>.json` per image, anywhere under ROOT, with `shapes` and `imagePath`.

`imagePath` is relative to the JSON (Windows backslashes accepted); when it does not resolve, an image
with the JSON's stem beside it is used. An embedded `imageData` is never extracted: a dataset whose image
files are missing is reported (LoadIssue), not silently rebuilt from base64 blobs.

Shapes: polygon -> Polygon + its bounding Box; rectangle -> Box; circle -> 32-gon Polygon + Box;
point / line / linestrip -> the Box of their points (marks where a defect is, even if degenerate);
other shape types (e.g. mask) -> LoadIssue, skipped.

Image label rule (all labelled formats): a JSON with at least one shape is DEFECTIVE with defect_type =
the label of its first shape; a JSON with no shape is GOOD (annotated, clean); an image under ROOT with
no JSON is UNKNOWN.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from engine.datasets.common import (
    bounding_box,
    check_declared_size,
    clamp_box,
    finish,
    images_by_stem,
    is_image_name,
    labelled_sample,
    no_categories,
    probe_size,
    unlabelled_sample,
)
from engine.datasets.registry import register_format
from engine.datasets.types import Box, Dataset, LoadIssue, Polygon

_DETECT_PEEK = 5  # JSON files opened by detect(); enough to tell labelme from other JSON
_CIRCLE_SIDES = 32


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(json files, image files) under root, skipping hidden folders, in one directory walk."""
    jsons: list[Path] = []
    images: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.lower().endswith(".json") and not f.startswith("."):
                jsons.append(Path(dirpath) / f)
            elif is_image_name(f):
                images.append(Path(dirpath) / f)
    return jsons, images


def _is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


@register_format("labelme", "labelme JSON: one <image>.json per image with shapes and imagePath")
class LabelmeReader:
    """labelme polygon / rectangle annotations."""

    name = "labelme"

    def detect(self, root: Path) -> bool:
        if not root.is_dir():
            return False
        candidates = sorted(root.glob("*.json")) + sorted(root.glob("*/*.json"))
        for p in candidates[:_DETECT_PEEK]:
            try:
                if _is_labelme(json.loads(p.read_bytes())):
                    return True
            except (OSError, ValueError):
                pass
        return False

    def load(self, root: Path, category: str | None = None) -> Dataset:
        no_categories(root, "labelme", category)
        ds = Dataset(root=root, format=self.name)
        jsons, images = _walk(root)
        done: set[str] = set()
        classes: list[str] = []
        for js in jsons:
            try:
                data = json.loads(js.read_bytes())
            except (OSError, ValueError) as exc:
                ds.issues.append(LoadIssue(js, f"not valid JSON ({exc})"))
                continue
            if not _is_labelme(data):
                ds.issues.append(LoadIssue(js, "not a labelme file (no 'shapes' and 'imagePath'); ignored"))
                continue
            image = _resolve_image(js, str(data.get("imagePath") or ""))
            if image is None:
                embedded = " (its embedded imageData is not extracted)" if data.get("imageData") else ""
                ds.issues.append(LoadIssue(js, f"image '{data.get('imagePath')}' not found{embedded}"))
                continue
            key = os.path.normpath(os.path.abspath(image))
            if key in done:
                ds.issues.append(LoadIssue(js, f"{image.name} is already annotated by another JSON; ignored"))
                continue
            done.add(key)
            size = probe_size(image, ds.issues)
            if size is None:
                continue
            check_declared_size(js, image, _declared_size(data), size, ds.issues)
            boxes, polygons, bad = _shapes(data["shapes"], size, js, ds.issues)
            sample = labelled_sample(image, boxes, polygons, uncertain=bad)
            classes.extend(c for c in sample.class_names if c not in classes)
            ds.samples.append(sample)
        for img in images:
            if os.path.normpath(os.path.abspath(img)) not in done and probe_size(img, ds.issues) is not None:
                ds.samples.append(unlabelled_sample(img))
        ds.class_names = sorted(classes)
        return finish(ds)


def _resolve_image(js: Path, image_path: str) -> Path | None:
    if image_path:
        p = Path(os.path.normpath(js.parent / image_path.replace("\\", "/")))
        if p.is_file():
            return p
    return images_by_stem(js.parent).get(js.stem)


def _declared_size(data: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return int(data["imageWidth"]), int(data["imageHeight"])
    except (KeyError, TypeError, ValueError):
        return None


def _shapes(
    shapes: list[Any], size: tuple[int, int], js: Path, issues: list[LoadIssue]
) -> tuple[list[Box], list[Polygon], bool]:
    boxes: list[Box] = []
    polygons: list[Polygon] = []
    bad = False
    for i, shape in enumerate(shapes, start=1):
        try:
            label = str(shape.get("label") or "defect")
            kind = shape.get("shape_type") or "polygon"
            pts = tuple((float(x), float(y)) for x, y in shape["points"])
            if not pts:
                raise ValueError("no points")
            if kind == "polygon":
                if len(pts) < 3:
                    raise ValueError(f"polygon with {len(pts)} points")
                polygons.append(Polygon(pts, label))
            elif kind == "circle":
                if len(pts) != 2:
                    raise ValueError(f"circle with {len(pts)} points")
                (cx, cy), (ex, ey) = pts
                r = math.hypot(ex - cx, ey - cy)
                pts = tuple(
                    (cx + r * math.cos(2 * math.pi * k / _CIRCLE_SIDES),
                     cy + r * math.sin(2 * math.pi * k / _CIRCLE_SIDES))
                    for k in range(_CIRCLE_SIDES)
                )
                polygons.append(Polygon(pts, label))
            elif kind == "rectangle":
                if len(pts) != 2:
                    raise ValueError(f"rectangle with {len(pts)} points")
            elif kind not in ("point", "line", "linestrip", "points"):
                raise ValueError(f"shape_type '{kind}' not supported")
            boxes.append(clamp_box(bounding_box(pts, label), size))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            issues.append(LoadIssue(js, f"shape {i}: {exc}"))
            bad = True
    return boxes, polygons, bad
