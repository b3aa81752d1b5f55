"""Anomaly-detection metrics: image AUROC / F1-max, pixel AUROC, AU-PRO (MVTec definition) and their curves.

Pixel metrics are computed from fine threshold histograms built one image at a time, so 100 M-pixel evaluation sets
fit in tens of megabytes (resolution and error bounds: engine/metrics/pixel.py). No metric ever flips an AUROC.
Never imports torch.
"""

from engine.metrics.image import f1_max, image_auroc, roc_curve_points
from engine.metrics.pixel import aupro, pixel_auroc, pro_curve
from engine.metrics.report import evaluate_anomaly

__all__ = [
    "aupro",
    "evaluate_anomaly",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "roc_curve_points",
]
