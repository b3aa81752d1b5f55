"""Augmentations that suit surface defects: the 8 flips/turns (defects have no up or down), scale jitter
(crop in, or pad out with the image's mean colour), photometric jitter (brightness, contrast, gamma, noise).

Boxes are float [N, 4] x0, y0, x1, y1 in pixels (end-exclusive); a box mostly cut away by a crop is dropped.
"""

from __future__ import annotations

import numpy as np

MIN_KEPT_FRACTION = 0.4  # a cropped box keeps at least this share of its area, else it is no longer that defect


def dihedral(image: np.ndarray, boxes: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """code 0..7: bit 0 flips left-right, then (code >> 1) quarter turns counter-clockwise."""
    w = image.shape[1]
    b = boxes.copy()
    if code & 1:
        image = image[:, ::-1]
        b[:, [0, 2]] = w - boxes[:, [2, 0]]
    for _ in range(code >> 1):  # np.rot90: (x, y) -> (y, W - x)
        w = image.shape[1]
        image = np.rot90(image)
        b = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1)
    return np.ascontiguousarray(image), b.astype(np.float32)


def scale_jitter(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 low: float = 0.6, high: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zoom in (a random crop of `s` times each side, s < 1) or out (the image on a canvas s times larger)."""
    h, w = image.shape[:2]
    s = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    if s < 1:
        ch, cw = max(8, round(h * s)), max(8, round(w * s))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        b = boxes - np.array([x0, y0, x0, y0], np.float32)
        clipped = np.clip(b, 0, [cw, ch, cw, ch]).astype(np.float32)
        area = lambda v: np.clip(v[:, 2] - v[:, 0], 0, None) * np.clip(v[:, 3] - v[:, 1], 0, None)  # noqa: E731
        keep = area(clipped) >= MIN_KEPT_FRACTION * np.maximum(area(b), 1e-6)
        return np.ascontiguousarray(image), clipped[keep], labels[keep]
    ch, cw = round(h * s), round(w * s)
    y0, x0 = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = image.reshape(-1, 3).mean(0).astype(np.uint8)
    canvas[y0:y0 + h, x0:x0 + w] = image
    return canvas, (boxes + np.array([x0, y0, x0, y0], np.float32)).astype(np.float32), labels


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32) / 255.0
    x = x ** float(np.exp(rng.uniform(-0.3, 0.3)))  # gamma
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.3) + mean + rng.uniform(-0.1, 0.1)  # contrast, brightness
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.0, 0.03), x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def augment(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random training view of an image and its boxes."""
    image, boxes = dihedral(image, boxes, int(rng.integers(0, 8)))
    if rng.random() < 0.7:
        image, boxes, labels = scale_jitter(image, boxes, labels, rng)
    return photometric(image, rng), boxes, labels
