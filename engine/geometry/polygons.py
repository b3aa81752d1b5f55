"""Mask <-> polygon geometry: the one rasterisation rule and the one tracer, used by every consumer.

Annotation (app/annotate/document.py), dataset export (engine/datasets/export_job.py), the promptable segmenter's
proposals (engine/runtime/segmenter.py) and segmenter training (trainers/promptseg/data.py) all convert here, so
a polygon covers the same pixels wherever it is drawn, exported, proposed or trained on.

Conventions:
* Coordinates are pixel coordinates (x, y) with vertices on pixel centres: pixel (i, j) is the point (j, i).
* `polygons_to_mask`: each polygon filled on its own (a list is a union; overlaps do not cancel), boundary
  pixels inside, vertices rounded to 1/16 pixel (cv2.fillPoly with shift=4, 8-connected edges). Integer
  vertices rasterise exactly as an integer fillPoly would; hand-drawn float vertices are not snapped first.
* `mask_to_polygons`: one ring per connected region, holes joined in by zero-width cuts, so each polygon is a
  plain filled region (annotation formats have no holes). At fineness=0, min_area=0 it is the exact inverse of
  `polygons_to_mask` (what export and the annotation document use); the segmenter's proposals simplify.

numpy + OpenCV only (scipy lazily, for masks with holes): the inference path and the app import this.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Sub-pixel precision of the rasteriser: vertices are rounded to 1 / 2**SUBPIXEL_SHIFT pixel.
SUBPIXEL_SHIFT = 4

PolygonLike = np.ndarray | Sequence[Sequence[float]]

def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _bridge(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """One ring covering `outer` minus `holes`: each hole is joined to the ring by a zero-width cut.

    Annotation formats (COCO polygons, YOLO segments, the dataset Polygon type) have no holes: a polygon is a
    filled region and several polygons are a union. A cut from the ring to the hole and back, along the shortest
    vertex-to-vertex segment, keeps the hole empty under both fill rules while staying one polygon. The cut runs
    through object pixels only, so rasterising it changes nothing.
    """
    # Nearest pairs through a k-d tree: a dense ring x hole distance table can take GBs on fine contours.
    # Imported here because only masks with holes need it.
    from scipy.spatial import cKDTree

    ring = outer
    # Leftmost holes first (as in ear-clipping triangulators): a later, more rightward hole then usually
    # bridges to a ring that already contains the earlier ones without crossing them.
    for hole in sorted(holes, key=lambda r: int(r[:, 0].min())):
        dist, nearest = cKDTree(ring).query(hole)
        j = int(np.argmin(dist))
        i = int(nearest[j])
        ring = np.concatenate([ring[: i + 1], hole[j:], hole[: j + 1], ring[i:]])
    return ring


def mask_to_polygons(mask: np.ndarray, fineness: float = 1.0, min_area: float = 4.0) -> list[np.ndarray]:
    """Polygons tracing a binary mask, in pixel coordinates (vertices on pixel centres).

    fineness: the largest distance, in pixels, a polygon may stray from the mask's boundary (the approxPolyDP
        epsilon): 0 keeps every boundary corner, about 1 is visually exact, larger values give fewer vertices.
    min_area: regions and holes smaller than this many pixels are dropped (specks vanish, pinholes are filled).

    Returns one int32 (N, 2) array of (x, y) per connected region, counter-clockwise in image coordinates, holes
    joined in by zero-width cuts (see `_bridge`), so each polygon is a plain filled region and the list is a
    union, as annotation formats expect. `polygons_to_mask` inverts it.
    """
    full = np.asarray(mask)
    if full.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {full.shape}")
    if full.dtype != bool:
        full = full > 0
    # Work on the mask's bounding box only: a defect is usually a small part of a large image, and the
    # region clean-up below costs time per pixel. A 1-pixel empty margin keeps outside background connected.
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if rows.size == 0:
        return []
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    m = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
    m[1:-1, 1:-1] = full[y0:y1, x0:x1]
    if min_area > 0:
        _drop_small_regions(m, min_area)
    # Two-level hierarchy: outer boundaries and their holes (an island in a hole is an outer boundary again).
    contours, hierarchy = cv2.findContours(
        m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(x0 - 1, y0 - 1)
    )
    if hierarchy is None:
        return []
    eps = max(0.0, float(fineness))
    rings: dict[int, np.ndarray] = {}
    for idx, contour in enumerate(contours):
        approx = cv2.approxPolyDP(contour, eps, True) if eps > 0 else contour
        if len(approx) < 3:
            approx = contour  # simplification collapsed a thin region; keep its exact outline
        if len(approx) < 3:
            approx = _thin_region_ring(contour)
        rings[idx] = approx.reshape(-1, 2).astype(np.int32)
    polygons = []
    for idx, ring in rings.items():
        parent = hierarchy[0][idx][3]
        if parent >= 0:
            continue  # a hole; joined to its outer ring below
        if _signed_area(ring) < 0:
            ring = ring[::-1]
        holes = []
        child = hierarchy[0][idx][2]
        while child >= 0:
            if child in rings:
                hole = rings[child]
                holes.append(hole[::-1] if _signed_area(hole) > 0 else hole)  # opposite winding to the outer
            child = hierarchy[0][child][0]
        polygons.append(np.ascontiguousarray(_bridge(ring, holes) if holes else ring))
    return polygons


def _drop_small_regions(m: np.ndarray, min_area: float) -> None:
    """In place: clear object regions and fill holes of fewer than `min_area` pixels.

    Done on pixels rather than on traced contours because a contour runs through boundary pixel centres, so its
    area misjudges small and thin regions (a 1-pixel-wide scratch has contour area 0). Connectivity matches
    findContours: objects 8-connected, holes 4-connected.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] < min_area
    small[0] = False  # label 0 is the background
    if small.any():
        m[small[labels]] = 0
    _, labels, stats, _ = cv2.connectedComponentsWithStats(1 - m, connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] < min_area
    small[0] = False  # label 0 is the object
    # background touching the border (the empty margin) is outside, never a hole
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small[border] = False
    if small.any():
        m[small[labels]] = 1


def _thin_region_ring(contour: np.ndarray) -> np.ndarray:
    """A 1-pixel-wide line or a single pixel traces as fewer than 3 distinct points: walk it there and back."""
    pts = contour.reshape(-1, 2)
    if len(pts) == 1:
        return np.repeat(pts, 3, axis=0)
    return np.concatenate([pts, pts[-2::-1]])


def polygons_to_mask(polygons: Sequence[PolygonLike], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons (pixel coordinates, vertices on pixel centres) into a bool mask of `shape` (H, W).

    Polygons are a union (each one is filled on its own, so overlapping polygons do not cancel); a polygon's
    boundary pixels count as inside, which makes this the exact inverse of `mask_to_polygons` at fineness=0,
    min_area=0.
    """
    out = np.zeros(shape[:2], np.uint8)
    shift = SUBPIXEL_SHIFT  # sub-pixel vertices (hand-drawn polygons have float coordinates)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        fixed = np.round(pts * (1 << shift)).astype(np.int32)
        cv2.fillPoly(out, [fixed], 1, lineType=cv2.LINE_8, shift=shift)
    return out.astype(bool)
