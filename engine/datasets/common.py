"""Helpers every reader shares, so that the robustness rules (issue, never crash) are written once.

A reader collects per-file problems in a plain list of LoadIssue and calls `finish` at the end; only a
load that yields no sample at all becomes a DatasetError.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from engine.datasets.imageio import IMAGE_SUFFIXES, image_size
from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN, Box, Dataset, LoadIssue, Polygon, Sample
from engine.errors import DatasetError, ImageReadError

# More missing files than this in one group would bury every other issue; the rest is summarised.
MAX_ISSUES_PER_GROUP = 20


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted; scandir avoids one stat per file on 10k-image folders."""
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if is_image_name(e.name) and e.is_file())
    except OSError:
        return []


def list_subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Lets a reader find `<stem>.<any image suffix>` with one directory listing instead of one stat per try."""
    found: dict[str, Path] = {}
    for p in list_images(folder):
        found.setdefault(p.stem, p)
    return found


def probe_size(path: Path, issues: list[LoadIssue], what: str = "") -> tuple[int, int] | None:
    """(width, height) from the header, or None with an issue: a broken file must not stop the load."""
    try:
        return image_size(path)
    except ImageReadError as exc:
        issues.append(LoadIssue(path, f"{what}{exc.reason}"))
        return None


def checked_mask(
    image: Path, size: tuple[int, int], mask: Path | None, issues: list[LoadIssue]
) -> Path | None:
    """The mask path if its header size equals the image's; a mismatched mask is never silently resized."""
    if mask is None:
        return None
    msize = probe_size(mask, issues, "mask: ")
    if msize is None:
        return None
    if msize != size:
        issues.append(
            LoadIssue(
                mask,
                f"mask size {msize[0]}x{msize[1]} does not match image {image.name} "
                f"size {size[0]}x{size[1]}; mask ignored",
            )
        )
        return None
    return mask


def check_declared_size(
    label_file: Path, image: Path, declared: tuple[int, int] | None, actual: tuple[int, int],
    issues: list[LoadIssue],
) -> None:
    """Annotation files that state a size different from the image were made for another image version."""
    if declared is None or declared[0] <= 0 or declared[1] <= 0 or declared == actual:
        return
    issues.append(
        LoadIssue(
            label_file,
            f"declares size {declared[0]}x{declared[1]} but {image.name} is {actual[0]}x{actual[1]}",
        )
    )


def add_capped(
    issues: list[LoadIssue], paths: Sequence[Path], reason: str, summary_path: Path,
    limit: int = MAX_ISSUES_PER_GROUP,
) -> None:
    """One issue per path up to `limit`, then a single summary line with the count."""
    for p in paths[:limit]:
        issues.append(LoadIssue(p, reason))
    if len(paths) > limit:
        issues.append(
            LoadIssue(summary_path, f"{len(paths) - limit} more files ({len(paths)} in all): {reason}")
        )


_SPLITS = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}


def split_name(name: str) -> str:
    """Maps a folder spelling of a split (train, val, test2017...) onto Sample.split's vocabulary.

    Exact names only, so a defect folder such as "test_scratch" is never mistaken for a split.
    """
    return _SPLITS.get(name.lower().rstrip("0123456789"), "unspecified")


def is_split_name(name: str) -> bool:
    return split_name(name) != "unspecified"


def bounding_box(points: Iterable[tuple[float, float]], class_name: str) -> Box:
    pts = list(points)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return Box(min(xs), min(ys), max(xs), max(ys), class_name)


def clamp_box(box: Box, size: tuple[int, int]) -> Box:
    w, h = size
    return Box(
        min(max(box.x0, 0.0), w), min(max(box.y0, 0.0), h),
        min(max(box.x1, 0.0), w), min(max(box.y1, 0.0), h), box.class_name,
    )


def labelled_sample(
    image: Path, boxes: list[Box], polygons: list[Polygon], split: str = "unspecified",
    uncertain: bool = False,
) -> Sample:
    """The image-level label rule of the labelled formats (COCO, YOLO, VOC, labelme).

    An annotation record with at least one box or polygon means DEFECTIVE, defect_type = the class of the
    first annotation; a record with none means the image was annotated and found clean, so GOOD -- unless
    part of the record was unreadable (`uncertain`), then UNKNOWN. An image with no record at all is
    UNKNOWN (see `unlabelled_sample`).
    """
    names: list[str] = []
    for c in [b.class_name for b in boxes] + [p.class_name for p in polygons]:
        if c not in names:
            names.append(c)
    if names:
        return Sample(image, split=split, label=DEFECTIVE, defect_type=names[0], boxes=boxes,
                      polygons=polygons, class_names=names)
    if uncertain:
        return Sample(image, split=split, label=UNKNOWN)
    return Sample(image, split=split, label=GOOD, defect_type="good")


def unlabelled_sample(image: Path, split: str = "unspecified") -> Sample:
    return Sample(image, split=split, label=UNKNOWN)


def no_categories(root: Path, fmt: str, category: str | None) -> None:
    """Formats without categories refuse one rather than silently loading everything."""
    if category is not None:
        raise DatasetError(f"{root}: {fmt} datasets have no categories (asked for '{category}')")


def select_categories(root: Path, fmt: str, available: list[str], category: str | None) -> list[str]:
    if not available:
        raise DatasetError(f"{root}: no {fmt} categories found")
    if category is None:
        return available
    if category not in available:
        raise DatasetError(f"{root}: category '{category}' not found; available: {', '.join(available)}")
    return [category]


def finish(dataset: Dataset) -> Dataset:
    """Refuses a load that produced no sample: an empty dataset is never what the user meant."""
    if not dataset.samples:
        detail = ""
        if dataset.issues:
            detail = f" ({len(dataset.issues)} problems, first: {dataset.issues[0]})"
        raise DatasetError(f"{dataset.root}: no usable images found as {dataset.format}{detail}")
    return dataset


def category_dirs(root: Path, is_category: Callable[[Path], bool]) -> list[Path]:
    """ROOT itself when it is one category folder, else its child folders that are categories."""
    if is_category(root):
        return [root]
    return [d for d in list_subdirs(root) if is_category(d)]


class CategoryFolderReader:
    """Base of readers whose layout has one folder per category (MVTec AD, MVTec 3D-AD).

    Subclasses say what a category folder looks like and how to read one; finding the categories, choosing
    the requested one (with a clear error listing the others) and finishing the dataset is shared.
    """

    name: str
    layout: str  # the layout's name in messages

    def is_category(self, folder: Path) -> bool:
        raise NotImplementedError

    def load_category(self, folder: Path, samples: list[Sample], issues: list[LoadIssue]) -> None:
        raise NotImplementedError

    def detect(self, root: Path) -> bool:
        return root.is_dir() and bool(category_dirs(root, self.is_category))

    def load(self, root: Path, category: str | None = None) -> Dataset:
        cats = {d.name: d for d in category_dirs(root, self.is_category)}
        chosen = select_categories(root, self.layout, sorted(cats), category)
        ds = Dataset(root=root, format=self.name, categories=chosen)
        for name in chosen:
            self.load_category(cats[name], ds.samples, ds.issues)
        return finish(ds)
