"""Defects and simulated prompts from ground-truth masks (numpy + OpenCV only; the benchmark shares them).

A "defect" is one connected part of a ground-truth mask, after joining parts that nearly touch: binarised or
anti-aliased masks often break one crack or one stain into several pieces a few pixels apart, and an annotator
draws one box around such a group, not one per piece. Specks too small to prompt are dropped.

Prompts follow SAM / RITM training: a jittered box, a few positive points inside, negative points in a ring just
outside the defect, and corrective clicks at the centre of the largest error region of the current prediction.
Coordinates are (x, y) pixel coordinates of the mask they were sampled from; boxes are (x0, y0, x1, y1) with
inclusive corners, as SAM's predictor uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Defect:
    """One defect of an image: its pixels (a bool mask of the image size) and its tight box."""

    mask: np.ndarray
    box: Box
    area: int


def merge_gap_pixels(shape: tuple[int, int], fraction: float) -> int:
    """The join distance for `split_defects`: a fraction of the image's longest side, at least one pixel."""
    return max(1, round(fraction * max(shape)))


def split_defects(mask: np.ndarray, merge_gap: int, min_area: int) -> list[Defect]:
    """The defects of a binary mask: connected components, joined when closer than `merge_gap` pixels.

    Groups come from the components of the mask dilated by merge_gap/2 (8-connected); each defect keeps only the
    original mask pixels of its group, so targets are never inflated. Groups of fewer than `min_area` pixels
    are dropped. Sorted largest first, for a stable order.
    """
    m = np.asarray(mask) > 0
    if not m.any():
        return []
    m8 = m.astype(np.uint8)
    radius = merge_gap // 2
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        grouped = cv2.dilate(m8, kernel)
    else:
        grouped = m8
    n, labels = cv2.connectedComponents(grouped, connectivity=8)
    defects = []
    for lab in range(1, n):
        part = (labels == lab) & m
        area = int(part.sum())
        if area < max(1, min_area):
            continue
        defects.append(Defect(part, mask_box(part), area))
    defects.sort(key=lambda d: -d.area)
    return defects


def mask_box(mask: np.ndarray) -> Box:
    """Tight (x0, y0, x1, y1) box of a non-empty mask, corners inclusive (SAM's convention)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    inter = np.logical_and(pred, gt).sum()
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def jitter_box(box: Box, rng: np.random.Generator, shape: tuple[int, int], frac: float = 0.1,
               max_px: float = 20.0) -> Box:
    """SAM's box noise: each coordinate moves by N(0, frac * side), clipped to max_px, kept inside the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    d = rng.normal(0.0, frac, 4) * np.array([w, h, w, h])
    d = np.clip(d, -max_px, max_px)
    H, W = shape
    nx0, ny0 = np.clip(x0 + d[0], 0, W - 1), np.clip(y0 + d[1], 0, H - 1)
    nx1, ny1 = np.clip(x1 + d[2], 0, W - 1), np.clip(y1 + d[3], 0, H - 1)
    return float(min(nx0, nx1)), float(min(ny0, ny1)), float(max(nx0, nx1)), float(max(ny0, ny1))


def sample_inside(mask: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n (x, y) points drawn uniformly from the mask's pixels, biased to its interior.

    Half of the draws come from the eroded mask when it has pixels: users click inside a defect, rarely on its
    anti-aliased edge.
    """
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    m = mask.astype(np.uint8)
    inner = cv2.erode(m, np.ones((3, 3), np.uint8))
    pts = []
    for i in range(n):
        src = inner if (i % 2 == 0 and inner.any()) else m
        ys, xs = np.nonzero(src)
        k = int(rng.integers(len(xs)))
        pts.append((xs[k], ys[k]))
    return np.asarray(pts, np.float32)


def sample_near_outside(defect_mask: np.ndarray, all_defects: np.ndarray, rng: np.random.Generator, n: int,
                        ring: int) -> np.ndarray:
    """n (x, y) background points in a ring of `ring` pixels around the defect, off every defect pixel.

    Negative clicks that teach the decoder where a defect ends are the ones next to its boundary; far-away
    negatives carry almost no information.
    """
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1))
    band = cv2.dilate(defect_mask.astype(np.uint8), kernel).astype(bool) & ~all_defects
    ys, xs = np.nonzero(band)
    if len(xs) == 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.integers(len(xs), size=n)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float32)


def correction_click(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int] | None:
    """The next corrective click of a simulated annotator: (x, y, label), or None when pred == gt.

    The largest connected error region (missed defect or false positive, 8-connected) is chosen, and the click
    goes to its most interior pixel (the maximum of the distance to the region's boundary, the image border
    counting as boundary), as in RITM's and SAM's click simulation. Label 1 (positive) for a missed defect,
    0 (negative) for a false positive.
    """
    best: tuple[int, np.ndarray, int] | None = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        _n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[k, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, labels == k, label)
    if best is None:
        return None
    _, region, label = best
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y), label
