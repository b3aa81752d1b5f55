"""Box-labelled training and evaluation data for detectors, from every labelled format the readers load.

`load_detection_set` turns any dataset (COCO, VOC, YOLO, labelme boxes; MVTec-layout masks, whose connected
components become boxes with the defect type as class) into `DetectionSample`s with class indices and a split:
the format's own split when its boxes come from annotations that carry one (COCO JSON names, VOC ImageSets, YOLO
split folders), else the stable 70/10/20 rule of engine.datasets.detection_split (mask-derived sets always: their
anomaly split puts every defective image in test). Bad boxes (zero area, also after clipping to the image),
unknown classes and unannotated images become per-file issues; a set without a single box is a DatasetError.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.common import add_capped
from engine.datasets.detection_split import detection_split, primary_class
from engine.datasets.imageio import read_mask
from engine.datasets.keys import sample_key
from engine.datasets.registry import load_dataset
from engine.datasets.types import DEFECTIVE, GOOD, Box, LoadIssue, Sample
from engine.errors import DatasetError, DefectScopeError

SPLITS = ("train", "validation", "test")


@dataclass
class DetectionSample:
    """One image with its boxes: x0, y0, x1, y1 in original pixels (x1, y1 exclusive), class indices, split."""

    image_path: Path
    boxes: np.ndarray  # [N, 4] float32
    labels: np.ndarray  # [N] int64, indices into DetectionSet.classes
    split: str  # "train", "validation" or "test"


@dataclass
class DetectionSet:
    root: Path
    classes: list[str]
    samples: list[DetectionSample]
    issues: list[LoadIssue] = field(default_factory=list)

    def select(self, split: str) -> list[DetectionSample]:
        return [s for s in self.samples if s.split == split]

    @property
    def n_boxes(self) -> int:
        return int(sum(len(s.labels) for s in self.samples))


def load_detection_set(
    root: str | Path, classes: list[str] | None = None, category: str | None = None
) -> DetectionSet:
    """The detection view of the dataset at `root` (any registered format); `classes` picks a subset in that
    order (the detector's class indices), None: every class found, sorted by name."""
    dataset = load_dataset(root, category=category)
    issues = list(dataset.issues)
    from_masks = any(not s.boxes and s.mask_path is not None for s in dataset.samples)
    records: list[tuple[Sample, list[Box]]] = []
    unannotated: list[Path] = []
    for sample in dataset.samples:
        if sample.boxes or sample.mask_path is not None:
            boxes = _valid_boxes(sample, sample.boxes or _mask_boxes(sample, issues), issues)
            if boxes:  # an image whose every box was bad is not a clean background image
                records.append((sample, boxes))
        elif sample.label == GOOD:
            records.append((sample, []))  # annotated and clean: a background image
        elif sample.label == DEFECTIVE:
            issues.append(LoadIssue(sample.image_path, "defective image without boxes or a mask; left out"))
        else:
            unannotated.append(sample.image_path)
    add_capped(issues, unannotated, "no annotation for this image; not used for training or testing",
               dataset.root)

    found = sorted({b.class_name for _, boxes in records for b in boxes})
    chosen = _chosen_classes(dataset.root, classes, found)
    # The split is drawn over every class, before a subset is chosen: an image is in the same part whatever
    # classes a protocol trains on.
    splits = _splits(dataset.root, records, own=not from_masks, issues=issues)
    records = _keep_classes(dataset.root, records, chosen, issues)
    if not any(boxes for _, boxes in records):
        detail = f" ({len(issues)} problems, first: {issues[0]})" if issues else ""
        raise DatasetError(f"{dataset.root}: no boxes to detect in this {dataset.format} dataset{detail}")

    index = {name: i for i, name in enumerate(chosen)}
    samples = []
    for sample, boxes in records:
        split = splits.get(sample_key(dataset.root, sample))
        if split is None:
            continue
        samples.append(DetectionSample(
            Path(sample.image_path),
            np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], np.float32).reshape(-1, 4),
            np.array([index[b.class_name] for b in boxes], np.int64),
            split,
        ))
    return DetectionSet(dataset.root, chosen, samples, issues)


def images_of_classes(dataset: DetectionSet, names: list[str]) -> DetectionSet:
    """The images whose every box is of one of `names` (and the clean background images), labels re-indexed to
    `names`: the training set of an open-set protocol, where an image showing an unseen class must not teach the
    detector that this class is background (as --classes alone would)."""
    unknown = [n for n in names if n not in dataset.classes]
    if unknown:
        raise DatasetError(f"{dataset.root}: classes: no boxes of class {', '.join(map(repr, unknown))} "
                           f"(classes found: {', '.join(dataset.classes)})")
    remap = np.full(len(dataset.classes), -1, np.int64)
    for i, name in enumerate(names):
        remap[dataset.classes.index(name)] = i
    kept = [DetectionSample(s.image_path, s.boxes, remap[s.labels], s.split) for s in dataset.samples
            if (remap[s.labels] >= 0).all()]
    dropped = len(dataset.samples) - len(kept)
    issues = list(dataset.issues)
    if dropped:
        issues.append(LoadIssue(dataset.root, f"{dropped} images show a class outside {', '.join(names)}; "
                                              "left out (open-set training)"))
    return DetectionSet(dataset.root, list(names), kept, issues)


def _valid_boxes(sample: Sample, boxes: Iterable[Box], issues: list[LoadIssue]) -> list[Box]:
    """Boxes with an area; the readers clip boxes to the image, so one wholly outside it arrives here empty."""
    kept = []
    for i, b in enumerate(boxes, start=1):
        if b.x1 > b.x0 and b.y1 > b.y0:
            kept.append(b)
        else:
            issues.append(LoadIssue(
                sample.image_path,
                f"box {i} (class '{b.class_name}', x0={b.x0:g} y0={b.y0:g} x1={b.x1:g} y1={b.y1:g}) has zero or "
                "negative area after clipping to the image (outside it or degenerate); left out",
            ))
    return kept


def _mask_boxes(sample: Sample, issues: list[LoadIssue]) -> list[Box]:
    """One box per 8-connected component of the defect mask, classed by the image's defect type."""
    assert sample.mask_path is not None
    try:
        mask = read_mask(sample.mask_path)
    except DefectScopeError as exc:
        issues.append(LoadIssue(sample.mask_path, f"mask unreadable ({exc}); image left out"))
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    name = sample.defect_type or "defect"
    boxes = [Box(float(x), float(y), float(x + w), float(y + h), name) for x, y, w, h, _ in stats[1:n]]
    if not boxes:
        issues.append(LoadIssue(sample.mask_path, "defect mask is empty; image left out"))
    return boxes


def _chosen_classes(root: Path, classes: list[str] | None, found: list[str]) -> list[str]:
    if classes is None:
        return found
    wanted = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
    if not wanted:
        raise DatasetError(f"{root}: classes: empty class list")
    absent = [c for c in wanted if c not in found]
    if absent:
        raise DatasetError(f"{root}: classes: no boxes of class {', '.join(repr(c) for c in absent)} "
                           f"(classes found: {', '.join(found) or 'none'})")
    return wanted


def _keep_classes(
    root: Path, records: list[tuple[Sample, list[Box]]], chosen: list[str], issues: list[LoadIssue]
) -> list[tuple[Sample, list[Box]]]:
    """Boxes of classes outside `chosen` are left out (counted per class); an image whose every box was left out is
    not a clean background image, so it is left out too."""
    keep = set(chosen)
    dropped: dict[str, int] = {}
    out, emptied = [], []
    for sample, boxes in records:
        kept = [b for b in boxes if b.class_name in keep]
        for b in boxes:
            if b.class_name not in keep:
                dropped[b.class_name] = dropped.get(b.class_name, 0) + 1
        if boxes and not kept:
            emptied.append(sample.image_path)
            continue
        out.append((sample, kept))
    for name, count in sorted(dropped.items()):
        issues.append(LoadIssue(root, f"class '{name}' is not among the chosen classes: {count} boxes left out"))
    add_capped(issues, emptied, "every box is of a class not chosen; image left out", root)
    return out


def _splits(
    root: Path, records: list[tuple[Sample, list[Box]]], own: bool, issues: list[LoadIssue]
) -> dict[str, str]:
    keys = [sample_key(root, s) for s, _ in records]
    if own and any(s.split == "train" for s, _ in records):
        out = {k: s.split for k, (s, _) in zip(keys, records, strict=True) if s.split in SPLITS}
        outside = [s.image_path for k, (s, _) in zip(keys, records, strict=True) if k not in out]
        add_capped(issues, outside, "not in any of the dataset's split lists; left out", root)
        return out
    strata = {k: primary_class(b.class_name for b in boxes) for k, (_, boxes) in zip(keys, records, strict=True)}
    return detection_split(keys, strata)
