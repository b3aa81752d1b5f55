"""One call for the evaluation report: every anomaly-detection metric of a test split."""

from __future__ import annotations

from typing import Any

from numpy.typing import ArrayLike

from engine.metrics.image import f1_max, image_auroc
from engine.metrics.pixel import MapsLike, MasksLike, _check_limit, pixel_histogram


def evaluate_anomaly(
    image_scores: ArrayLike,
    image_labels: ArrayLike,
    anomaly_maps: MapsLike | None = None,
    gt_masks: MasksLike | None = None,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Image AUROC, F1-max and its threshold; pixel AUROC and AU-PRO when maps and masks are given.

    gt_masks may hold None for good images (an all-normal mask of the map's size). Pixel metrics are None when
    there are no masks or no defect pixel at all. Image metrics need both good and defective images (ValueError
    otherwise). Keys: image_auroc, pixel_auroc, aupro, f1_max, threshold, pixel_f1_max, pixel_threshold.
    """
    _check_limit(fpr_limit)
    if gt_masks is not None and anomaly_maps is None:
        raise ValueError("gt_masks were given without anomaly_maps")
    best_f1, threshold = f1_max(image_scores, image_labels)
    result: dict[str, Any] = {
        "image_auroc": image_auroc(image_scores, image_labels),
        "pixel_auroc": None,
        "aupro": None,
        "f1_max": best_f1,
        "threshold": threshold,
        "pixel_f1_max": None,
        "pixel_threshold": None,
    }
    if anomaly_maps is None or gt_masks is None:
        return result
    # One pass over the pixels serves all pixel metrics.
    hist = pixel_histogram(anomaly_maps, gt_masks)
    if hist is None:
        return result
    pixel_f1, pixel_threshold = hist.f1_max()
    result.update(
        pixel_auroc=hist.auroc(),
        aupro=hist.aupro(fpr_limit),
        pixel_f1_max=pixel_f1,
        pixel_threshold=pixel_threshold,
    )
    return result
