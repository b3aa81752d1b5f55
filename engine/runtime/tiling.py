"""Overlapping tiles over a large image and the class-aware merge of the boxes found in them.

A detector resizes its input to `input_size` on the long side, so on a 6000 x 4500 image a 20-px defect would
shrink below one pixel. Larger images are therefore also run tile by tile at native scale (tiles of the model's
input size overlapping by a quarter, the last row and column aligned to the image's edge), and the boxes of every
pass are merged by non-maximum suppression per class, so a defect seen by two tiles is reported once.
"""

from __future__ import annotations

import cv2
import numpy as np

TILE_OVERLAP = 0.25  # a defect up to a quarter tile wide lies wholly inside at least one tile


def tile_origins(length: int, tile: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length` with at least `overlap` of a tile shared."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def tile_windows(height: int, width: int, tile: int, overlap: float = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) windows covering an image, row by row."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in tile_origins(height, tile, overlap) for x in tile_origins(width, tile, overlap)]


def merge_detections(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-aware NMS over detections from several passes; kept ones sorted by score, at most `max_detections`."""
    if len(scores) == 0:
        return boxes.reshape(0, 4).astype(np.float32), scores.astype(np.float32), classes.astype(np.int64)
    xywh = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes]
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh, scores.astype(float).tolist(), classes.astype(int).tolist(),
                                              0.0, float(iou)), dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:max_detections]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), classes[keep].astype(np.int64)
