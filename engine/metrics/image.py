"""Image-level metrics: AUROC, F1-max and the ROC curve, all on one score per image.

Thin wrappers over scikit-learn whose value is in the checks: sklearn only warns (and returns NaN) when a class is
missing, which would end up as "nan" in a report instead of an explanation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def _image_inputs(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    raw = np.asarray(labels).reshape(-1)
    if s.size != raw.size:
        raise ValueError(f"got {s.size} image scores but {raw.size} image labels")
    if s.size == 0:
        raise ValueError("no image scores given")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValueError(f"image_scores[{bad[0]}] is {s[bad[0]]}; scores must be finite numbers")
    if raw.dtype == bool:
        return s, raw.astype(np.int8)
    if not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"image_labels must be 0 (good) or 1 (defective), got dtype {raw.dtype}")
    odd = np.unique(raw[(raw != 0) & (raw != 1)])
    if odd.size:
        raise ValueError(f"image_labels must be 0 (good) or 1 (defective); found {odd[:5].tolist()}")
    return s, raw.astype(np.int8)


def _require_both_classes(labels: np.ndarray, what: str) -> None:
    n_bad = int(np.count_nonzero(labels))
    if n_bad == 0 or n_bad == labels.size:
        only = "defective (1)" if n_bad else "good (0)"
        raise ValueError(
            f"{what} needs both good (0) and defective (1) images; all {labels.size} images are {only}"
        )


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image scores (higher = more anomalous) against labels (1 = defective).

    Never flipped: a value below 0.5 means the scores rank good images above defective ones, and hiding that
    (as some research code does with 1 - AUROC) would report a broken model as a good one.
    """
    s, y = _image_inputs(scores, labels)
    _require_both_classes(y, "image AUROC")
    return float(roc_auc_score(y, s))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (defective when score >= threshold)."""
    s, y = _image_inputs(scores, labels)
    if not np.any(y):
        raise ValueError(f"F1 needs at least one defective (1) image; all {y.size} images are good (0)")
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold; drop it so indices line up.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def roc_curve_points(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) points of the image ROC curve, from (0, 0) to (1, 1)."""
    s, y = _image_inputs(scores, labels)
    _require_both_classes(y, "an ROC curve")
    fpr, tpr, _ = roc_curve(y, s)
    return fpr.astype(np.float64), tpr.astype(np.float64)
