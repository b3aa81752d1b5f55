"""Augmentations of an image and its label map for defect segmentation: flips and turns, zoom-in crops, and the
detector's photometric jitter (brightness, contrast, gamma, noise; trainers.detector.augment).

Flips and half turns suit every surface (defects have no up or down); quarter turns only square-ish images
(textures, tiles), since turning a long part puts it in a pose inspection never sees.
"""

from __future__ import annotations

import numpy as np

from trainers.detector.augment import photometric

SQUARE_ISH = 1.25  # the longer side at most this many times the shorter: quarter turns allowed
ZOOM_PROBABILITY = 0.5
ZOOM_MIN = 0.6  # a zoom-in crop keeps at least this share of each side


def dihedral(image: np.ndarray, labels: np.ndarray, code: int) -> tuple[np.ndarray, np.ndarray]:
    """code 0..7: bit 0 flips left-right, then (code >> 1) quarter turns counter-clockwise (as the detector's)."""
    if code & 1:
        image, labels = image[:, ::-1], labels[:, ::-1]
    turns = code >> 1
    return np.ascontiguousarray(np.rot90(image, turns)), np.ascontiguousarray(np.rot90(labels, turns))


def pose_codes(h: int, w: int) -> tuple[int, ...]:
    """The dihedral codes allowed for an h x w image: all 8 when square-ish, else flips and half turns."""
    return tuple(range(8)) if max(h, w) <= SQUARE_ISH * min(h, w) else (0, 1, 4, 5)


def zoom_in(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of `s` times each side (ZOOM_MIN <= s < 1): small defects seen larger."""
    h, w = labels.shape
    s = float(rng.uniform(ZOOM_MIN, 1.0))
    ch, cw = max(8, round(h * s)), max(8, round(w * s))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return (np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]),
            np.ascontiguousarray(labels[y0:y0 + ch, x0:x0 + cw]))


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random training view of an image (H x W x 3 uint8) and its label map (H x W uint8)."""
    codes = pose_codes(*labels.shape)
    image, labels = dihedral(image, labels, int(codes[rng.integers(0, len(codes))]))
    if rng.random() < ZOOM_PROBABILITY:
        image, labels = zoom_in(image, labels, rng)
    return photometric(image, rng), labels
