"""Detections against ground truth at one score threshold: each box a hit, a wrong class or a false alarm, each
labelled box found or missed, and the class confusion matrix. What the workbench draws and counts as the threshold
moves; AP and mAP (threshold-free) stay with pycocotools in engine.metrics.detection.

The rule is COCO's greedy one at IoU 0.5: boxes at or above the threshold, highest score first, each takes the
unmatched labelled box it overlaps most (IoU >= 0.5), one of its own class when there is one, else of any class
(a wrong class: the defect was found but misnamed). A labelled box counts as found only by a box of its class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

HIT, WRONG_CLASS, FALSE_ALARM = "hit", "wrong_class", "false_alarm"
BACKGROUND = "background"  # the confusion matrix's extra row (a box on no defect) and column (a defect missed)


@dataclass(frozen=True)
class ImageMatch:
    kept: np.ndarray  # indices of the boxes at or above the threshold, score order
    outcomes: list[str]  # per kept box: HIT, WRONG_CLASS or FALSE_ALARM
    matched_truth: list[int]  # per kept box: the labelled box it took, -1 for none
    found: np.ndarray  # [T] bool per labelled box: taken by a box of its own class

    @property
    def n_hits(self) -> int:
        return self.outcomes.count(HIT)

    @property
    def n_false_alarms(self) -> int:
        return len(self.outcomes) - self.n_hits

    @property
    def n_misses(self) -> int:
        return int((~self.found).sum())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] IoU of x0, y0, x1, y1 boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(truth_boxes: np.ndarray, truth_classes: Sequence[str], boxes: np.ndarray, scores: np.ndarray,
                classes: Sequence[str], threshold: float, iou: float = 0.5) -> ImageMatch:
    scores = np.asarray(scores, np.float64).reshape(-1)
    kept = np.flatnonzero(scores >= threshold)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    ious = box_iou(np.asarray(boxes).reshape(-1, 4)[kept], truth_boxes)
    taken = np.zeros(len(truth_classes), bool)
    found = np.zeros(len(truth_classes), bool)
    outcomes, matched = [], []
    for row, i in enumerate(kept):
        free = (~taken) & (ious[row] >= iou)
        same = free & (np.asarray(truth_classes, object) == classes[i]) if len(truth_classes) else free
        pool = same if same.any() else free
        if not pool.any():
            outcomes.append(FALSE_ALARM)
            matched.append(-1)
            continue
        t = int(np.argmax(np.where(pool, ious[row], -1.0)))
        taken[t] = True
        hit = truth_classes[t] == classes[i]
        found[t] |= hit
        outcomes.append(HIT if hit else WRONG_CLASS)
        matched.append(t)
    return ImageMatch(kept, outcomes, matched, found)


def confusion_matrix(images: Iterable[tuple[np.ndarray, Sequence[str], np.ndarray, np.ndarray, Sequence[str]]],
                     classes: Sequence[str], threshold: float, iou: float = 0.5) -> np.ndarray:
    """[K + 1, K + 1] counts over images given as (truth boxes, truth classes, boxes, scores, classes): rows the
    labelled class (last row: BACKGROUND, a box on no defect), columns the detected class (last column:
    BACKGROUND, a labelled defect no box took). Classes outside `classes` are left out."""
    index = {c: k for k, c in enumerate(classes)}
    bg = len(classes)
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    for truth_boxes, truth_classes, boxes, scores, det_classes in images:
        m = match_image(truth_boxes, truth_classes, boxes, scores, det_classes, threshold, iou)
        taken = set()
        for i, t in zip(m.kept, m.matched_truth, strict=True):
            col = index.get(det_classes[i])
            row = bg if t < 0 else index.get(truth_classes[t])
            if t >= 0:
                taken.add(t)
            if col is not None and row is not None:
                matrix[row, col] += 1
        for t, name in enumerate(truth_classes):
            if t not in taken and name in index:
                matrix[index[name], bg] += 1
    return matrix
