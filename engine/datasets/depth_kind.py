"""What a depth map is: bit depth, background, scale. The one place that decides it (training, inspection, the
RGB + 3D benchmark and the 3D dock all ask here).

Real sensors deliver depth in many ways: 16-bit PNG or TIFF in sensor units (often mm or 0.1 mm) with 0 where
nothing came back, float TIFF in mm or m, or an 8-bit rendering stretched per image to 0..255 with no background
at all (MulSen-AD's processed depth). Nothing downstream may assume one of them:

  background   "zero": 0 (and NaN / inf) marks pixels without a measurement, and there are such pixels (zero is a
               spike in the histogram, not the low end of the surface); "none": every pixel is a measurement,
               0 included (NaN / inf are still unmeasured).
  scale        "metric": values are in one unit across files (depth differences mean the same on every part);
               "normalised": each file was stretched on its own (8-bit maps always, since 8 bits cannot carry a
               metric range; 16-bit maps spanning the whole 0..65535 range; float maps spanning 0..1), so only
               shape, not size, compares between files.
  clipped      share of pixels at the type's ceiling (255, 65535): out-of-range readings; reported, kept.

`detect_depth_kind` looks at one array, `detect_files` at a spread sample of a dataset's files and takes the
majority (training writes the result into the model; inspection processes every part the model's way and refuses
a file of another bit depth, naming it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BACKGROUNDS = ("zero", "none")
SCALES = ("metric", "normalised")
# Zero is a background when it is a spike: at least this share of the pixels ...
MIN_ZERO_SHARE = 0.001
# ... and this many times as frequent as the next few integer levels (1, 2, 3) on average.
ZERO_SPIKE = 10.0
FULL_RANGE = 0.9  # a file whose measured values span this share of the type's range was stretched per image


@dataclass(frozen=True)
class DepthKind:
    """How a depth map (or a dataset's depth maps) encodes depth."""

    dtype: str  # "uint8", "uint16", "float32", ...
    background: str  # see BACKGROUNDS
    scale: str  # see SCALES
    clipped: float = 0.0  # share of pixels at the type's ceiling
    files: int = 1  # files the decision was made from
    disagreeing: int = 0  # of those, files that on their own would have been decided otherwise

    @property
    def bits(self) -> str:
        return {"uint8": "8-bit", "int8": "8-bit", "uint16": "16-bit", "int16": "16-bit"}.get(
            self.dtype, "float" if self.dtype.startswith("float") else self.dtype)

    def describe(self) -> str:
        """One line for the job log, the model's metadata and the workbench."""
        bg = "zero = no measurement" if self.background == "zero" else "no background (every pixel measured)"
        sc = "metric (one unit across files)" if self.scale == "metric" else "normalised per image (scale unknown)"
        text = f"{self.bits} depth, {bg}, {sc}"
        if self.clipped >= 0.001:
            text += f", {100 * self.clipped:.1f}% of pixels at the ceiling (clipped)"
        if self.files > 1:
            text += f"; from {self.files} files" + (f", {self.disagreeing} of them on their own would differ"
                                                    if self.disagreeing else "")
        return text

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}

    @classmethod
    def from_dict(cls, d: dict) -> DepthKind:
        return cls(**{k: d[k] for k in ("dtype", "background", "scale", "clipped", "files", "disagreeing") if k in d})

    def same_encoding(self, other: DepthKind) -> bool:
        """Whether a file of `other`'s kind can be processed the way this kind is (same bit depth)."""
        return self.bits == other.bits


def _ceiling(dtype: np.dtype) -> float | None:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None


def zero_is_background(depth: np.ndarray) -> bool:
    """Whether exact zeros mark unmeasured pixels (a spike at 0) rather than the low end of the surface."""
    n = depth.size
    zeros = int(np.count_nonzero(depth == 0))
    if zeros < max(1, MIN_ZERO_SHARE * n):
        return False
    if np.issubdtype(depth.dtype, np.integer):
        next_levels = np.mean([np.count_nonzero(depth == v) for v in (1, 2, 3)])
        return zeros >= ZERO_SPIKE * max(1.0, float(next_levels))
    return True  # an exact 0.0 in a continuous measurement is a marker, not a reading


def detect_depth_kind(depth: np.ndarray) -> DepthKind:
    """The kind of one single-channel depth map (as decoded from its file, dtype untouched)."""
    a = np.asarray(depth)
    finite = np.isfinite(a) if np.issubdtype(a.dtype, np.floating) else np.ones(a.shape, bool)
    background = "zero" if zero_is_background(np.where(finite, a, 0)) else "none"
    measured = finite & (a != 0) if background == "zero" else finite
    values = a[measured].astype(np.float64)
    ceiling = _ceiling(a.dtype)
    clipped = float(np.count_nonzero(a == ceiling) / a.size) if ceiling is not None else 0.0
    if a.dtype.itemsize == 1:
        scale = "normalised"  # 8 bits cannot hold a metric range: whatever made it chose the scale
    elif not len(values):
        scale = "metric"
    elif ceiling is not None:
        lo, hi = float(values.min()), float(values.max())
        scale = "normalised" if (hi - lo) >= FULL_RANGE * ceiling else "metric"
    else:
        lo, hi = float(values.min()), float(values.max())
        scale = "normalised" if lo >= 0.0 and hi <= 1.0 and (hi - lo) >= FULL_RANGE else "metric"
    return DepthKind(str(a.dtype), background, scale, round(clipped, 4))


def combine(kinds: Sequence[DepthKind]) -> DepthKind:
    """The majority kind of several files (bit depth, background and scale voted on separately)."""
    if not kinds:
        raise ValueError("no depth maps to decide from")
    dtype = Counter(k.dtype for k in kinds).most_common(1)[0][0]
    background = Counter(k.background for k in kinds).most_common(1)[0][0]
    scale = Counter(k.scale for k in kinds).most_common(1)[0][0]
    odd = sum(1 for k in kinds if (k.dtype, k.background, k.scale) != (dtype, background, scale))
    clipped = float(np.mean([k.clipped for k in kinds]))
    return DepthKind(dtype, background, scale, round(clipped, 4), len(kinds), odd)


def detect_files(paths: Sequence[str | Path], limit: int = 24) -> DepthKind:
    """The kind of a set of depth maps from an evenly spread sample of at most `limit` of them."""
    from engine.datasets.pointcloud import read_depth_array

    paths = list(paths)
    if not paths:
        raise ValueError("no depth maps to decide from")
    idx = np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int))
    return combine([detect_depth_kind(read_depth_array(paths[i])) for i in idx])


def measured_mask(depth: np.ndarray, kind: DepthKind) -> np.ndarray:
    """H x W bool: pixels holding a measurement under `kind` (NaN / inf never; 0 not when 0 is background)."""
    a = np.asarray(depth)
    m = np.isfinite(a) if np.issubdtype(a.dtype, np.floating) else np.ones(a.shape, bool)
    if kind.background == "zero":
        m &= a != 0
    return m
