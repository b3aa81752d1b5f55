"""YOLO txt labels: `images/` + `labels/` (optionally `images/<split>/` + `labels/<split>/`, or the
Ultralytics variant `<split>/images/` + `<split>/labels/`).

Each line is `cls cx cy w h` (detection) or `cls x1 y1 x2 y2 ...` (segmentation), all normalised to
0..1; they are de-normalised with the image size read from the header only. Segmentation lines give a
Polygon plus its bounding Box. Class names come from `data.yaml`'s `names` (read with a tiny parser: the
project does not depend on PyYAML) or `classes.txt`; without either, the class id is the name.

Image label rule (all labelled formats): a label file with at least one object is DEFECTIVE with
defect_type = the class of its first object; an empty label file is GOOD (annotated, clean). An image
without a label file is UNKNOWN -- Ultralytics treats such images as background, but nothing proves
they were ever looked at; write an empty .txt to mark an image as checked-and-clean.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.datasets.common import (
    add_capped,
    bounding_box,
    clamp_box,
    finish,
    is_split_name,
    labelled_sample,
    list_images,
    list_subdirs,
    no_categories,
    probe_size,
    split_name,
    unlabelled_sample,
)
from engine.datasets.registry import register_format
from engine.datasets.types import Box, Dataset, LoadIssue, Polygon


def _pairs(root: Path) -> list[tuple[Path, Path, str]]:
    """(image folder, label folder, split) for every layout variant present."""
    pairs: list[tuple[Path, Path, str]] = []
    images, labels = root / "images", root / "labels"
    if images.is_dir() and labels.is_dir():
        pairs.append((images, labels, "unspecified"))
        pairs.extend((d, labels / d.name, split_name(d.name)) for d in list_subdirs(images))
    for d in list_subdirs(root):
        if is_split_name(d.name) and (d / "images").is_dir() and (d / "labels").is_dir():
            pairs.append((d / "images", d / "labels", split_name(d.name)))
    return pairs


def _txt_files(folder: Path) -> dict[str, Path]:
    try:
        with os.scandir(folder) as it:
            return {e.name[:-4]: Path(e.path) for e in it if e.name.endswith(".txt") and e.is_file()}
    except OSError:
        return {}


def parse_yaml_names(text: str) -> list[str] | None:
    """The `names` of a YOLO data.yaml: inline list, block list (`- a`) or mapping (`0: a`)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^names\s*:\s*(.*)$", line)
        if not m:
            continue
        rest = m.group(1).split(" #")[0].strip()
        if rest.startswith("["):
            j = i
            while "]" not in rest and j + 1 < len(lines):
                j += 1
                rest += " " + lines[j].strip()
            inner = rest[1 : rest.index("]")] if "]" in rest else rest[1:]
            return [_unquote(v) for v in inner.split(",") if v.strip()]
        if rest.startswith("{"):
            inner = rest[1 : rest.index("}")] if "}" in rest else rest[1:]
            pairs = [item.partition(":") for item in inner.split(",") if item.strip()]
            try:
                mapping = {int(k.strip()): _unquote(v) for k, _, v in pairs}
            except ValueError:
                return None
            return [mapping[k] for k in sorted(mapping)]
        items: dict[int, str] = {}
        listed: list[str] = []
        for sub in lines[i + 1 :]:
            if not sub.strip() or sub.lstrip().startswith("#"):
                continue
            if not sub[:1].isspace() and not sub.startswith("-"):
                break
            s = sub.split(" #")[0].strip()
            if s.startswith("-"):
                listed.append(_unquote(s[1:]))
            elif ":" in s:
                key, _, value = s.partition(":")
                try:
                    items[int(key.strip())] = _unquote(value)
                except ValueError:
                    continue
        if listed:
            return listed
        if items:
            return [items[k] for k in sorted(items)]
        return None
    return None


def _unquote(value: str) -> str:
    return value.strip().strip("'\"")


def _class_names(root: Path, label_dirs: list[Path]) -> list[str] | None:
    for name in ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml"):
        p = root / name
        if p.is_file():
            try:
                names = parse_yaml_names(p.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                names = None
            if names:
                return names
    for d in [root, *label_dirs]:
        p = d / "classes.txt"
        if p.is_file():
            try:
                return [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            except OSError:
                continue
    return None


@register_format("yolo", "YOLO txt labels: images/ + labels/ (normalised boxes or polygons), data.yaml names")
class YoloReader:
    """YOLO detection / segmentation labels."""

    name = "yolo"

    def detect(self, root: Path) -> bool:
        return root.is_dir() and any(_txt_files(lab) for _, lab, _ in _pairs(root))

    def load(self, root: Path, category: str | None = None) -> Dataset:
        no_categories(root, "YOLO", category)
        pairs = _pairs(root)
        names = _class_names(root, [lab for _, lab, _ in pairs])
        ds = Dataset(root=root, format=self.name)
        seen_ids: set[int] = set()
        for images, labels, split in pairs:
            txts = _txt_files(labels)
            image_stems = set()
            for img in list_images(images):
                image_stems.add(img.stem)
                size = probe_size(img, ds.issues)
                if size is None:
                    continue
                txt = txts.get(img.stem)
                if txt is None:
                    ds.samples.append(unlabelled_sample(img, split))
                    continue
                boxes, polygons, bad = _read_labels(txt, size, names, seen_ids, ds.issues)
                ds.samples.append(labelled_sample(img, boxes, polygons, split, uncertain=bad))
            orphans = [p for stem, p in sorted(txts.items()) if stem not in image_stems and stem != "classes"]
            add_capped(ds.issues, orphans, f"label file has no matching image in {images}", labels)
        ds.class_names = names if names is not None else [str(i) for i in sorted(seen_ids)]
        return finish(ds)


def _read_labels(
    txt: Path, size: tuple[int, int], names: list[str] | None, seen_ids: set[int], issues: list[LoadIssue]
) -> tuple[list[Box], list[Polygon], bool]:
    boxes: list[Box] = []
    polygons: list[Polygon] = []
    try:
        text = txt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(LoadIssue(txt, f"cannot read label file ({exc.__class__.__name__})"))
        return boxes, polygons, True
    bad = False
    w, h = size
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls = int(parts[0])
            vals = [float(v) for v in parts[1:]]
            if cls < 0 or (names is not None and cls >= len(names)):
                raise ValueError(f"class id {cls} out of range")
            if len(vals) == 4:
                cx, cy, bw, bh = vals
                name = names[cls] if names is not None else str(cls)
                boxes.append(clamp_box(Box((cx - bw / 2) * w, (cy - bh / 2) * h,
                                           (cx + bw / 2) * w, (cy + bh / 2) * h, name), size))
            elif len(vals) >= 6 and len(vals) % 2 == 0:
                name = names[cls] if names is not None else str(cls)
                pts = tuple((x * w, y * h) for x, y in zip(vals[::2], vals[1::2], strict=True))
                polygons.append(Polygon(pts, name))
                boxes.append(clamp_box(bounding_box(pts, name), size))
            else:
                raise ValueError(f"{len(vals)} coordinates (expected 4, or an even number >= 6)")
        except ValueError as exc:
            issues.append(LoadIssue(txt, f"line {n}: {exc}"))
            bad = True
            continue
        seen_ids.add(cls)
    return boxes, polygons, bad
