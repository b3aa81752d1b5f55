"""Organised point clouds: MVTec 3D-AD xyz TIFFs and plain depth maps, read and checked per file.

An organised cloud is H x W x 3 float32 (x, y, z per pixel of the matching RGB image), zeros where the sensor
measured nothing. Every problem is a PointCloudError naming the file: a corrupt TIFF, a wrong shape or type, or
a cloud without a single measured point must never surface as a numpy traceback in the workbench.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import DatasetError


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


def read_depth(path: str | Path, scale: float = 1.0) -> np.ndarray:
    """A depth map (single-channel TIFF or 16-bit PNG) as an organised cloud: x = column, y = row, z = depth *
    scale; 0 depth = not measured."""
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
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise PointCloudError(p, f"expected a single-channel depth map, found shape {tuple(depth.shape)}")
    z = np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0) * np.float32(scale)
    if not (z != 0).any():
        raise PointCloudError(p, "the depth map has no measured point (all zeros)")
    h, w = z.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    measured = z != 0
    return np.stack([xs * measured, ys * measured, z], -1)


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


def read_cloud(path: str | Path) -> np.ndarray:
    """An organised cloud from an xyz TIFF (H x W x 3) or a depth map (single channel, PNG or TIFF)."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                shape = tif.series[0].shape if tif.series else ()
        except Exception:
            shape = ()  # read_xyz reports the damage
        if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
            return read_depth(p)
        return read_xyz(p)
    return read_depth(p)


def cloud_path(extra: dict | None) -> Path | None:
    """The point-cloud file of a sample (xyz TIFF, else depth map), None when it has none."""
    if not extra:
        return None
    p = extra.get("xyz_path") or extra.get("depth_path")
    return Path(p) if p else None
