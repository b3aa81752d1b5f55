"""Heatmap overlays for reports and the CLI (the GUI draws its own live overlay)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(anomaly_map: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Normalised map -> RGB uint8 (JET); `lo`..`hi` spans the colour range (0.5 = threshold sits mid-scale)."""
    scaled = np.clip((anomaly_map - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay_heatmap(
    image: np.ndarray, anomaly_map: np.ndarray, threshold: float = 0.5, alpha: float = 0.45
) -> np.ndarray:
    """Image with the heatmap blended over it and the above-threshold regions outlined in white."""
    heat = colorize(anomaly_map)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    region = (anomaly_map >= threshold).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    cv2.drawContours(out, contours, -1, (255, 255, 255), thickness)
    return out
