"""Pixel-level metrics (pixel AUROC, AU-PRO, pixel F1-max) computed from per-threshold histograms.

Evaluation sets reach 50-100 M pixels, so the obvious route (concatenate every pixel, argsort in float64, cumulate)
needs well over a gigabyte. Instead the pixels are counted into bins between candidate thresholds, one image (and one
block of rows) at a time, in two passes:

1. per image: shape checks, class counts, the exact min / max of normal and of defect scores, and a random
   subsample of pixel scores (SAMPLE_SIZE in all, fixed seed so reports are reproducible);
2. per image: connected defect regions (8-connectivity) and, per threshold bin, the number of normal pixels, the
   number of defect pixels and the sum over defect pixels of 1 / (size of their region).

Thresholds ("edges"): up to NORMAL_EDGES quantiles of the sampled normal scores, DEFECT_EDGES quantiles of the
sampled defect scores, the exact extremes of both classes, and an isolating edge just above every heavily tied value
(e.g. a map clipped at 0). When the sample holds at most EXACT_LIMIT distinct values (small inputs, quantised maps)
every sampled value is an edge, and the results are exact whenever every distinct value made it into the sample
(always when the data has at most SAMPLE_SIZE pixels, since then the sample is all of it).

Resolution: the counts at every edge are exact, so the ROC and PRO curves are the exact curves sampled at these
thresholds. Pixel AUROC treats pixels that share a bin as ties (Mann-Whitney half credit): its error is at most half
the largest share of normal pixels in one bin, ~1/(2*16384) = 3e-5 with the defaults. AU-PRO joins exact curve points
with straight lines: its error is at most half the largest FPR step divided by the FPR limit, ~1e-4 for a limit of
0.3 (in practice both are far smaller; tests compare against exact references).

Memory: independent of the number of images. Besides the inputs: one image's int32 region labels, a few bytes per
pixel of one block of BLOCK_PIXELS, the sample and its sorted copies (SAMPLE_SIZE float64, ~8 MB each) and three
histograms of about 20k bins. Measured with tracemalloc: ~43 MB peak for 40 maps of 1024 x 1024 (1.8 s on 2 cores),
~42 MB for 582 maps of ~400 x 400 (93 M pixels, 3.7 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

NORMAL_EDGES = 16384
DEFECT_EDGES = 4096
EXACT_LIMIT = NORMAL_EDGES + DEFECT_EDGES
SAMPLE_SIZE = 1 << 20
BLOCK_PIXELS = 1 << 20
_SEED = 20240917

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

MapsLike = np.ndarray | Sequence[ArrayLike]
MasksLike = np.ndarray | Sequence[ArrayLike | None]


# --------------------------------------------------------------------------------------------------- inputs


def _items(arrays: object, name: str, allow_none: bool) -> list:
    if arrays is None:
        raise ValueError(f"{name} is required")
    if isinstance(arrays, np.ndarray):
        if arrays.ndim != 3:
            raise ValueError(
                f"{name} must be an N x H x W array or a sequence of 2-D arrays, got an array of shape "
                f"{arrays.shape}"
            )
        return [arrays[i] for i in range(arrays.shape[0])]
    items = list(arrays)  # type: ignore[call-overload]
    out = []
    for i, a in enumerate(items):
        if a is None and allow_none:
            out.append(None)
            continue
        if a is None:
            raise ValueError(f"{name}[{i}] is None")
        arr = np.asarray(a)
        if arr.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D array, got shape {arr.shape}")
        out.append(arr)
    return out


def _pairs(anomaly_maps: MapsLike, gt_masks: MasksLike) -> list[tuple[np.ndarray, np.ndarray | None]]:
    maps = _items(anomaly_maps, "anomaly_maps", allow_none=False)
    masks = _items(gt_masks, "gt_masks", allow_none=True)
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} anomaly maps but {len(masks)} ground-truth masks")
    if not maps:
        raise ValueError("no anomaly maps given")
    for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
        if m.size == 0:
            raise ValueError(f"anomaly_maps[{i}] is empty (shape {m.shape})")
        if k is not None and k.shape != m.shape:
            raise ValueError(f"anomaly_maps[{i}] has shape {m.shape} but gt_masks[{i}] has shape {k.shape}")
        if not (np.issubdtype(m.dtype, np.number) or m.dtype == bool) or np.iscomplexobj(m):
            raise ValueError(f"anomaly_maps[{i}] must hold real numbers, got dtype {m.dtype}")
    return list(zip(maps, masks, strict=True))


def _work_array(m: np.ndarray) -> np.ndarray:
    # float32 sorts about twice as fast as float64 and halves the temporaries; types that float32 holds exactly
    # (bool, 8/16-bit integers, float16) are widened only that far.
    if m.dtype in (np.float32, np.float64):
        return m
    if m.dtype == bool or m.dtype.itemsize <= 2:
        return m.astype(np.float32)
    return m.astype(np.float64)


def _defect_mask(k: np.ndarray | None) -> np.ndarray | None:
    """Boolean defect mask (any non-zero value is defect), or None for an all-normal image."""
    if k is None:
        return None
    d = k if k.dtype == bool else k != 0
    return d if d.any() else None


def _ceil_to_float32(edges: np.ndarray) -> np.ndarray:
    # For float32 scores x, "x >= e" equals "x >= smallest float32 >= e": bins stay identical while the sort and
    # search run on float32 without a float64 copy of the data.
    e32 = edges.astype(np.float32)
    low = e32.astype(np.float64) < edges
    e32[low] = np.nextafter(e32[low], np.float32(np.inf))
    return e32


# --------------------------------------------------------------------------------------------------- histogram


@dataclass
class PixelHistogram:
    """Per-bin counts; bin k holds the scores in [edges[k], edges[k+1]) (the last bin: >= edges[-1])."""

    edges: np.ndarray  # float64, increasing; edges[0] is the smallest score, edges[-1] the largest
    normal: np.ndarray  # int64 count of normal pixels per bin
    defect: np.ndarray  # int64 count of defect pixels per bin
    region_share: np.ndarray  # float64: per bin, sum over defect pixels of 1 / size of their region
    n_regions: int

    @property
    def n_normal(self) -> int:
        return int(self.normal.sum())

    @property
    def n_defect(self) -> int:
        return int(self.defect.sum())

    def _require_normal(self, what: str) -> None:
        if self.n_normal == 0:
            raise ValueError(
                f"{what} needs normal pixels, but every pixel of gt_masks is defect (masks inverted?)"
            )

    def auroc(self) -> float:
        self._require_normal("pixel AUROC")
        n_pos, n_neg = self.n_defect, self.n_normal
        below = np.cumsum(self.normal) - self.normal
        # Mann-Whitney U doubled, in exact integers (no overflow below ~4e9 pixels): a defect pixel beats every
        # normal pixel in lower bins and ties with those in its own bin.
        u2 = int(np.sum(self.defect * (2 * below + self.normal)))
        return u2 / (2 * n_pos * n_neg)

    def pro_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Full PRO curve (fpr, pro) from the threshold above the maximum (0, 0) down to the minimum (1, 1)."""
        self._require_normal("AU-PRO")
        fpr = np.concatenate(([0.0], np.cumsum(self.normal[::-1]) / self.n_normal))
        shares = np.cumsum(self.region_share[::-1])
        # Dividing by the accumulated total rather than n_regions makes the end point exactly 1.0, so a perfect
        # map yields exactly 1.0 and not 1 - 1e-16.
        pro = np.concatenate(([0.0], shares / shares[-1]))
        return fpr, pro

    def pro_curve(self, fpr_limit: float) -> tuple[np.ndarray, np.ndarray]:
        _check_limit(fpr_limit)
        fpr, pro = self.pro_points()
        k = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:k] <= fpr_limit, and k >= 1
        x, y = fpr[:k], pro[:k]
        if x[-1] < fpr_limit:  # then k < len(fpr) because fpr[-1] == 1.0 >= fpr_limit
            x0, y0, x1, y1 = fpr[k - 1], pro[k - 1], fpr[k], pro[k]
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x, y = np.append(x, fpr_limit), np.append(y, y_lim)
        return x, y

    def aupro(self, fpr_limit: float) -> float:
        x, y = self.pro_curve(fpr_limit)
        # Integrate the gap above the curve: it is exactly 0 for a perfect map, where summing the area itself
        # would leave rounding residue.
        gap = 1.0 - y
        missing = float(np.sum(np.diff(x) * (gap[:-1] + gap[1:]) * 0.5))
        return min(1.0, max(0.0, 1.0 - missing / fpr_limit))

    def f1_max(self) -> tuple[float, float]:
        """Best pixel F1 over the bin thresholds (defect when score >= threshold) and that threshold."""
        tp = np.cumsum(self.defect[::-1])[::-1]
        fp = np.cumsum(self.normal[::-1])[::-1]
        f1 = 2.0 * tp / (tp + fp + self.n_defect)
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.edges[best])


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _choose_edges(normal_sample: np.ndarray, defect_sample: np.ndarray, extremes: list[float]) -> np.ndarray:
    sample = np.concatenate((normal_sample, defect_sample, extremes))
    distinct = np.unique(sample)
    if distinct.size <= EXACT_LIMIT:
        return distinct
    parts = [np.asarray(extremes, dtype=np.float64)]
    for values, count in ((normal_sample, NORMAL_EDGES), (defect_sample, DEFECT_EDGES)):
        if values.size == 0:
            continue
        values = np.sort(values)
        q = values[np.linspace(0, values.size - 1, min(count, values.size)).round().astype(np.int64)]
        parts.append(q)
        # A value repeated among the quantiles holds more than a bin's worth of pixels; an edge right above it
        # gives it a bin of its own, so its ties are handled exactly instead of being mixed with larger scores.
        tied = np.unique(q[1:][q[1:] == q[:-1]])
        parts.append(np.nextafter(tied, np.inf))
    edges = np.unique(np.concatenate(parts))
    return edges[edges <= max(extremes)]


def pixel_histogram(anomaly_maps: MapsLike, gt_masks: MasksLike) -> PixelHistogram | None:
    """Bin every pixel of every map (see the module notes); None when the masks hold no defect pixel at all."""
    pairs = _pairs(anomaly_maps, gt_masks)
    total = sum(m.size for m, _ in pairs)
    take_all = total <= SAMPLE_SIZE
    rng = np.random.default_rng(_SEED)

    # Pass 1: checks, exact class extremes, and the sample the thresholds come from.
    n_defect = 0
    lo_n, hi_n, lo_d, hi_d = np.inf, -np.inf, np.inf, -np.inf
    samples: list[np.ndarray] = []
    sample_flags: list[np.ndarray] = []
    for i, (raw, k) in enumerate(pairs):
        m = _work_array(raw)
        lo, hi = float(m.min()), float(m.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"anomaly_maps[{i}] contains NaN or infinite values")
        d = _defect_mask(k)
        if d is None:
            lo_n, hi_n = min(lo_n, lo), max(hi_n, hi)
        else:
            nd = int(np.count_nonzero(d))
            n_defect += nd
            lo_d = min(lo_d, float(m.min(where=d, initial=np.inf)))
            hi_d = max(hi_d, float(m.max(where=d, initial=-np.inf)))
            if nd < m.size:
                normal = ~d
                lo_n = min(lo_n, float(m.min(where=normal, initial=np.inf)))
                hi_n = max(hi_n, float(m.max(where=normal, initial=-np.inf)))
        flat = m.reshape(-1)
        n_take = round(SAMPLE_SIZE * m.size / total)
        idx = slice(None) if take_all else rng.integers(0, m.size, size=n_take)
        samples.append(flat[idx].astype(np.float64))
        sample_flags.append(
            np.zeros(samples[-1].size, dtype=bool)
            if d is None
            else d.reshape(-1)[idx].astype(bool, copy=False)
        )
    if n_defect == 0:
        return None

    values = np.concatenate(samples)
    flags = np.concatenate(sample_flags)
    del samples, sample_flags
    extremes = [v for v in (lo_n, hi_n, lo_d, hi_d) if np.isfinite(v)]
    edges = _choose_edges(values[~flags], values[flags], extremes)
    del values, flags
    edges32 = _ceil_to_float32(edges)
    n_bins = edges.size

    # Pass 2: histograms, one block of rows at a time.
    normal_hist = np.zeros(n_bins, dtype=np.int64)
    defect_hist = np.zeros(n_bins, dtype=np.int64)
    share_hist = np.zeros(n_bins, dtype=np.float64)
    n_regions = 0
    for raw, k in pairs:
        m = _work_array(raw)
        e = edges32 if m.dtype == np.float32 else edges
        d = _defect_mask(k)
        if d is not None:
            labels, n_lab = ndimage.label(d, structure=_EIGHT_CONNECTED)
            n_regions += int(n_lab)
            sizes = np.bincount(labels.reshape(-1), minlength=n_lab + 1)
            inv_size = np.zeros(n_lab + 1, dtype=np.float64)
            inv_size[1:] = 1.0 / sizes[1:]
        rows = max(1, BLOCK_PIXELS // m.shape[1])
        for r0 in range(0, m.shape[0], rows):
            block = m[r0 : r0 + rows]
            if d is None:
                normal_vals = np.sort(block, axis=None)
            else:
                db = d[r0 : r0 + rows]
                normal_vals = block[~db]
                normal_vals.sort()
                dv = block[db]
                b = np.searchsorted(e, dv, side="right") - 1
                defect_hist += np.bincount(b, minlength=n_bins)
                share_hist += np.bincount(b, weights=inv_size[labels[r0 : r0 + rows][db]], minlength=n_bins)
            # Normal pixels are the bulk: sorting a block (SIMD sort) and locating the few edges in it is several
            # times faster than a binary search per pixel.
            pos = np.searchsorted(normal_vals, e, side="left")
            normal_hist += np.diff(pos, append=normal_vals.size)
    return PixelHistogram(edges, normal_hist, defect_hist, share_hist, n_regions)


def _histogram_or_raise(anomaly_maps: MapsLike, gt_masks: MasksLike, what: str) -> PixelHistogram:
    hist = pixel_histogram(anomaly_maps, gt_masks)
    if hist is None:
        raise ValueError(f"{what} needs defect pixels, but gt_masks contain none")
    return hist


# --------------------------------------------------------------------------------------------------- public


def pixel_auroc(anomaly_maps: MapsLike, gt_masks: MasksLike) -> float:
    """AUROC over all pixels of all images (maps: N x H x W or a sequence of 2-D arrays; mask non-zero = defect).

    Never flipped (see image_auroc). Resolution: see the module notes (error below ~3e-5).
    """
    return _histogram_or_raise(anomaly_maps, gt_masks, "pixel AUROC").auroc()


def aupro(anomaly_maps: MapsLike, gt_masks: MasksLike, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to fpr_limit, divided by fpr_limit (MVTec AD definition).

    PRO at a threshold is the mean, over every connected defect region (8-connectivity, per image) of every image,
    of the fraction of the region's pixels scoring >= threshold; FPR is over all normal pixels of all images.
    A perfect map gives 1.0. Images without defects contribute normal pixels only.
    """
    _check_limit(fpr_limit)
    return _histogram_or_raise(anomaly_maps, gt_masks, "AU-PRO").aupro(fpr_limit)


def pro_curve(
    anomaly_maps: MapsLike, gt_masks: MasksLike, fpr_limit: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) points of the PRO curve from (0, 0) up to fpr == fpr_limit (interpolated there)."""
    _check_limit(fpr_limit)
    return _histogram_or_raise(anomaly_maps, gt_masks, "a PRO curve").pro_curve(fpr_limit)
