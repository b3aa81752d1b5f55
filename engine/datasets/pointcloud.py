"""Organised point clouds: MVTec 3D-AD xyz TIFFs and plain depth maps, read and checked per file.

An organised cloud is H x W x 3 float32 (x, y, z per pixel of the matching RGB image), zeros where the sensor
measured nothing. Every problem is a PointCloudError naming the file: a corrupt TIFF, a wrong shape or type, or
a cloud without a single measured point must never surface as a numpy traceback in the workbench.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import DatasetError

if TYPE_CHECKING:
    from engine.datasets.depth_kind import DepthKind


class PointCloudError(DatasetError):
    """An unreadable or unusable point-cloud file; the message starts with its path."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_xyz(path: str | Path) -> np.ndarray:
    """An organised cloud (H x W x 3 float32) from an xyz TIFF; NaN / inf become 0 (not measured)."""
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise PointCloudError(p, "point-cloud file not found")
    try:
        data = tifffile.imread(p)
    except Exception as exc:  # tifffile raises many types for damaged files; all mean the same to the user
        raise PointCloudError(p, f"cannot read TIFF ({exc.__class__.__name__}: {exc})") from None
    if data.size == 0:  # tifffile logs and returns an empty array for a damaged page table
        raise PointCloudError(p, "cannot read TIFF (no image data: the file is damaged or truncated)")
    if data.ndim != 3 or data.shape[-1] != 3:
        raise PointCloudError(p, f"expected an organised H x W x 3 xyz image, found shape {tuple(data.shape)}")
    if not np.issubdtype(data.dtype, np.floating):
        raise PointCloudError(p, f"expected float xyz coordinates, found {data.dtype}")
    xyz = np.nan_to_num(data.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if not valid_points(xyz).any():
        raise PointCloudError(p, "the cloud has no measured point (all zeros)")
    return xyz


def read_depth_array(path: str | Path) -> np.ndarray:
    """A depth map (single-channel PNG or TIFF, any bit depth) as decoded, dtype untouched; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise PointCloudError(p, "depth-map file not found")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            depth = tifffile.imread(p)
        else:
            import cv2

            depth = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED)
            if depth is None:
                raise ValueError("not a decodable image")
    except Exception as exc:
        raise PointCloudError(p, f"cannot read depth map ({exc.__class__.__name__}: {exc})") from None
    if depth.size == 0:
        raise PointCloudError(p, "cannot read depth map (no image data: the file is damaged or truncated)")
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise PointCloudError(p, f"expected a single-channel depth map, found shape {tuple(depth.shape)}")
    if not (np.issubdtype(depth.dtype, np.integer) or np.issubdtype(depth.dtype, np.floating)):
        raise PointCloudError(p, f"expected integer or float depth values, found {depth.dtype}")
    return depth


def read_depth_measured(path: str | Path, kind: DepthKind | None = None) -> tuple[np.ndarray, np.ndarray, DepthKind]:
    """(H x W float32 depth, H x W bool measured, the kind it was read as) of a depth map: as `kind` says (a
    model's), else as detected from the file itself (engine.datasets.depth_kind)."""
    from engine.datasets.depth_kind import detect_depth_kind, measured_mask

    raw = read_depth_array(path)
    kind = kind or detect_depth_kind(raw)
    measured = measured_mask(raw, kind)
    if not measured.any():
        raise PointCloudError(path, "the depth map has no measured point (all zeros)" if kind.background == "zero"
                              else "the depth map has no measured point (all NaN)")
    z = np.where(measured, raw.astype(np.float32), np.float32(0.0))
    return z, measured, kind


def read_depth(path: str | Path, scale: float = 1.0) -> np.ndarray:
    """A depth map (single-channel PNG or TIFF) as an organised cloud: x = column, y = row, z = depth * scale;
    unmeasured pixels (0 where 0 is the background, NaN) are zeros. Whether 0 is a background is detected
    (engine.datasets.depth_kind), not assumed: in a map without one, 0 is the surface's lowest reading."""
    z, measured, _ = read_depth_measured(path)
    h, w = z.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs * measured, ys * measured, z * np.float32(scale) * measured], -1)


def display_cloud(path: str | Path, relief: float = 0.2) -> tuple[np.ndarray, str]:
    """(organised cloud for viewing, one line saying what the file is) of an xyz TIFF or a depth map.

    An xyz cloud is shown as measured. A depth map has no x / y pitch and often no known depth scale, so it is
    shown as relief: x = column, y = row, z = depth relative to its median, scaled so the part's depth range
    (1st to 99th percentile) spans `relief` of the image side; unmeasured pixels (a zero background) are left
    out, so no flat background plane is drawn.
    """
    p = Path(path)
    if not is_depth_map(p):
        return read_xyz(p), "xyz point cloud"
    z, measured, kind = read_depth_measured(p)
    v = z[measured]
    lo, hi = np.percentile(v, [1, 99])
    span = float(hi - lo) or float(v.max() - v.min()) or 1.0
    h, w = z.shape
    dz = (z - float(np.median(v))) / span * relief * max(h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # z grows away from the sensor; a constant offset keeps every measured point off the all-zero "no point"
    out = np.stack([xs + 1.0, ys + 1.0, dz + 2.0 * max(h, w)], -1).astype(np.float32)
    out[~measured] = 0.0
    return out, kind.describe()


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """H x W bool: pixels with a measured point (any coordinate non-zero)."""
    return np.any(xyz != 0, axis=-1)


def write_xyz(path: str | Path, xyz: np.ndarray) -> None:
    """Write an organised cloud as MVTec 3D-AD does (float32 TIFF, H x W x 3)."""
    import tifffile

    xyz = np.asarray(xyz, np.float32)
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"expected H x W x 3, got {xyz.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(Path(path), xyz, photometric="minisblack")


def _is_depth_tiff(p: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            shape = tif.series[0].shape if tif.series else ()
    except Exception:
        return False  # read_xyz reports the damage
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1)


def is_depth_map(path: str | Path) -> bool:
    """Whether a point-cloud file is a single-channel depth map (PNG, or a one-channel TIFF) rather than xyz."""
    p = Path(path)
    return _is_depth_tiff(p) if p.suffix.lower() in (".tif", ".tiff") else True


def read_cloud(path: str | Path) -> np.ndarray:
    """An organised cloud from an xyz TIFF (H x W x 3) or a depth map (single channel, PNG or TIFF)."""
    p = Path(path)
    return read_depth(p) if is_depth_map(p) else read_xyz(p)


def cloud_path(extra: dict | None) -> Path | None:
    """The point-cloud file of a sample (xyz TIFF, else depth map), None when it has none."""
    if not extra:
        return None
    p = extra.get("xyz_path") or extra.get("depth_path")
    return Path(p) if p else None
