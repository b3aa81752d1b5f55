"""Detections drawn on an image for reports and the CLI (the GUI draws its own live boxes)."""

from __future__ import annotations

import cv2
import numpy as np

# One colour per class index, repeating; chosen to stay readable on grey steel and on colour images.
PALETTE = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 220, 220),
           (255, 128, 0), (160, 160, 160)]


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, class_names: list[str],
    threshold: float = 0.0,
) -> np.ndarray:
    """A copy of the RGB image with each box at or above `threshold` outlined and labelled "class score"."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    font_scale = max(0.35, max(image.shape[:2]) / 1600)
    for (x0, y0, x1, y1), score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
        if score < threshold:
            continue
        colour = PALETTE[int(cls) % len(PALETTE)]
        p0, p1 = (round(x0), round(y0)), (round(x1) - 1, round(y1) - 1)
        cv2.rectangle(out, p0, p1, colour, thickness)
        name = class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(cls)
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else p0[1] + th + 2
        cv2.rectangle(out, (p0[0], ty - th - 2), (p0[0] + tw + 2, ty + base), colour, -1)
        cv2.putText(out, label, (p0[0] + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
