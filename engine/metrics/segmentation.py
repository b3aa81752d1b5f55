"""Semantic-segmentation metrics: per-class IoU and mIoU from a confusion matrix summed over a whole set.

IoU of class c = TP / (TP + FP + FN) over every pixel of every image (the PASCAL VOC / Cityscapes rule, not a mean
of per-image IoUs, so a tiny defect on one image does not weigh as much as a large one). A class that is neither
labelled nor predicted anywhere has no IoU (None) and is left out of the mean. mIoU is the mean over the DEFECT
classes (label 1..K): background's IoU is near 1 on any inspection image and would only inflate it, so it is
reported on its own (and with it, `miou_with_background`). Pixels labelled IGNORE are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = 255


def confusion(truth: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """[n_labels, n_labels] int64 pixel counts, rows the labelled class, columns the predicted one."""
    truth = np.asarray(truth).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if truth.shape != pred.shape:
        raise ValueError(f"truth and prediction differ in size ({truth.size} vs {pred.size} pixels)")
    keep = truth != IGNORE
    t, p = truth[keep].astype(np.int64), pred[keep].astype(np.int64)
    if t.size and (t.max() >= n_labels or p.max() >= n_labels or min(t.min(), p.min()) < 0):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}")
    return np.bincount(t * n_labels + p, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def iou_per_label(matrix: np.ndarray) -> list[float | None]:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return [float(i / u) if u > 0 else None for i, u in zip(tp, union, strict=True)]


def iou_report(matrix: np.ndarray, classes: Sequence[str]) -> dict:
    """{"miou", "iou_per_class" {class: IoU | None}, "background_iou", "miou_with_background", "pixel_accuracy"}
    for a confusion matrix over background + `classes` (label i = classes[i - 1])."""
    if matrix.shape != (len(classes) + 1,) * 2:
        raise ValueError(f"a {matrix.shape} confusion matrix for {len(classes)} classes + background")
    ious = iou_per_label(matrix)
    defect = [v for v in ious[1:] if v is not None]
    every = [v for v in ious if v is not None]
    total = int(matrix.sum())
    return {
        "miou": round(float(np.mean(defect)), 5) if defect else None,
        "iou_per_class": {c: None if v is None else round(v, 5) for c, v in zip(classes, ious[1:], strict=True)},
        "background_iou": None if ious[0] is None else round(ious[0], 5),
        "miou_with_background": round(float(np.mean(every)), 5) if every else None,
        "pixel_accuracy": round(float(np.trace(matrix) / total), 5) if total else None,
    }
