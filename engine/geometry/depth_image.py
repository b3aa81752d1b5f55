"""Depth maps as geometry images: relief, curvature and slope, invariant to a per-image depth offset and scale.

A depth map from a real sensor has no x / y pitch on record and often no known depth scale (8-bit renderings,
maps stretched per image), so 3D descriptors that need metric points (FPFH, for xyz clouds) do not apply. Instead
each depth map becomes a three-channel image that the RGB patch backbone describes, on the same patch grid:

  relief     depth minus its median (a per-image offset is gone), divided by a robust spread
  curvature  Laplacian of the smoothed depth (offset-free by construction), divided by its robust spread
  slope      gradient magnitude of the smoothed depth, divided by its robust spread

The spreads (1.4826 x median absolute deviation over measured pixels) come from the image itself when the depth
kind is "normalised" (engine.datasets.depth_kind: the scale differs per file, so only shape compares) and are one
set per dataset, fixed at training and stored in the model, when it is "metric" (a 0.5 mm dent must look the same
on every part). Unmeasured pixels (a zero background) are drawn as "far and flat", so a part's silhouette and
missing material still show. The map is resampled to the model's grid first, so smoothing is in grid units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.depth_kind import DepthKind

CHANNELS = ("relief", "curvature", "slope")
SMOOTH_SIGMA = 1.5  # grid pixels, before the derivatives
# uint8 encoding: centre and gain per spread (relief and curvature are signed, slope is not)
_GAIN = {"relief": 40.0, "curvature": 20.0, "slope": 60.0}
UNMEASURED = (255, 128, 0)  # far (relief at the top of the range), flat (no curvature, no slope)


@dataclass(frozen=True)
class DepthScales:
    """Robust spreads of the three channels, in the depth map's own units."""

    relief: float
    curvature: float
    slope: float

    def to_dict(self) -> dict:
        return asdict(self)


def robust_spread(values: np.ndarray) -> float:
    """1.4826 x MAD (the standard deviation of a normal sample), else the std, else 1: never 0."""
    v = np.asarray(values, np.float64).ravel()
    if not len(v):
        return 1.0
    mad = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return mad if mad > 1e-12 else (float(v.std()) if v.std() > 1e-12 else 1.0)


def resample(z: np.ndarray, measured: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(size x size depth, measured mask): area-weighted over measured pixels; a grid pixel is measured when at
    least half of what it covers was."""
    if z.shape == (size, size):
        return z.astype(np.float32), measured.copy()
    m = measured.astype(np.float32)
    interp = cv2.INTER_AREA if z.shape[0] >= size and z.shape[1] >= size else cv2.INTER_LINEAR
    num = cv2.resize(np.where(measured, z, 0).astype(np.float32), (size, size), interpolation=interp)
    den = cv2.resize(m, (size, size), interpolation=interp)
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0).astype(np.float32), den >= 0.5


def _fill(z: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Unmeasured pixels take the nearest measured pixel's value (no false edges for the derivatives)."""
    if measured.all():
        return z
    _, labels = cv2.distanceTransformWithLabels((~measured).astype(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(measured)
    index = np.zeros(int(labels.max()) + 1, np.int64)
    index[labels[measured]] = np.arange(len(ys))
    src = index[labels]
    return z[ys[src], xs[src]].reshape(z.shape).astype(np.float32)


def channels(z: np.ndarray, measured: np.ndarray) -> dict[str, np.ndarray]:
    """Unscaled relief, curvature and slope of a depth map at its grid (values at unmeasured pixels are fill)."""
    relief = (_fill(z, measured) - float(np.median(z[measured]))).astype(np.float32)
    smooth = cv2.GaussianBlur(relief, (0, 0), SMOOTH_SIGMA)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return {"relief": relief, "curvature": cv2.Laplacian(smooth, cv2.CV_32F, ksize=3), "slope": np.hypot(gx, gy)}


def image_scales(ch: dict[str, np.ndarray], measured: np.ndarray) -> DepthScales:
    return DepthScales(*(robust_spread(ch[name][measured]) for name in CHANNELS))


def dataset_scales(per_image: list[DepthScales]) -> DepthScales:
    """One set of spreads for a metric dataset: the median of its images' own."""
    return DepthScales(*(float(np.median([getattr(s, n) for s in per_image])) for n in CHANNELS))


def encode(ch: dict[str, np.ndarray], measured: np.ndarray, scales: DepthScales) -> np.ndarray:
    """H x W x 3 uint8 geometry image (relief, curvature, slope)."""
    planes = []
    for name in CHANNELS:
        centre = 0.0 if name == "slope" else 128.0
        planes.append(np.clip(centre + _GAIN[name] * ch[name] / getattr(scales, name), 0, 255))
    img = np.stack(planes, -1).round().astype(np.uint8)
    img[~measured] = UNMEASURED
    return img


def geometry_image(z: np.ndarray, measured: np.ndarray, size: int, kind: DepthKind,
                   scales: DepthScales | None = None) -> tuple[np.ndarray, np.ndarray, DepthScales]:
    """(size x size x 3 uint8 geometry image, size x size measured mask, the spreads used) of a depth map.

    `scales`: the dataset's spreads for a metric kind (None while training collects them: the image's own are
    used and returned); a normalised kind always uses the image's own."""
    zg, mg = resample(z, measured, size)
    if not mg.any():
        mg = np.ones_like(mg)  # a sliver of measurement below half a grid pixel everywhere: use what there is
    ch = channels(zg, mg)
    own = image_scales(ch, mg)
    used = own if kind.scale == "normalised" or scales is None else scales
    return encode(ch, mg, used), mg, own


def geometry_image_file(path: str | Path, size: int, kind: DepthKind | None = None,
                        scales: DepthScales | None = None) -> tuple[np.ndarray, np.ndarray, DepthScales, DepthKind]:
    """`geometry_image` of a depth-map file read as `kind` (a model's; None: detected from the file). A file of
    another bit depth than `kind` is refused, naming the file."""
    from engine.datasets.depth_kind import detect_depth_kind, measured_mask
    from engine.datasets.pointcloud import PointCloudError, read_depth_array

    raw = read_depth_array(path)
    own = detect_depth_kind(raw)
    if kind is not None and not kind.same_encoding(own):
        raise PointCloudError(path, f"a {own.bits} depth map, but the model was trained on {kind.bits} depth maps "
                                    f"({kind.describe()})")
    used_kind = kind or own
    measured = measured_mask(raw, used_kind)
    if not measured.any():
        raise PointCloudError(path, "the depth map has no measured point")
    z = np.where(measured, raw.astype(np.float32), np.float32(0.0))
    img, mg, own_scales = geometry_image(z, measured, size, used_kind, scales)
    return img, mg, own_scales, used_kind
