"""Organised-cloud preprocessing before 3D features: background plane, largest cluster, model grid.

As in the MVTec 3D-AD literature (BTF, M3DM): the background (the table or fixture the part lies on) is the
plane found by RANSAC on the points of the image's border ring, where there is never a part; points within
`plane_distance` of it are dropped; the largest DBSCAN cluster of the rest is the part (dust and the odd
stray point go); the cloud is then resampled to the model's square grid by nearest neighbour, zeros (no point)
kept. Surfaces that fill the whole view (no border background) keep every point: when removing the plane
would leave almost nothing, the ring *was* the part.

Results are cached as .npz files keyed by the file's path, size, mtime and the parameters, in a folder the
caller owns (beside the run), so the user's files are only ever read.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.pointcloud import PointCloudError, read_cloud, valid_points
from engine.fsutil import atomic_write_bytes


@dataclass(frozen=True)
class PrepConfig:
    grid: int = 224  # output H = W
    ring_fraction: float = 0.04  # border ring width, fraction of the image side
    plane_distance: float = 0.005  # fraction of the cloud's extent (diagonal of its bounding box)
    dbscan_eps: float = 0.02  # fraction of the extent
    dbscan_min_points: int = 10
    max_dbscan_points: int = 60_000  # clustering runs on a subsample beyond this; labels spread back by grid
    remove_background: bool = True


@dataclass
class Prepared:
    xyz: np.ndarray  # grid x grid x 3 float32, zeros = no point / background
    foreground: np.ndarray  # grid x grid bool
    plane: tuple[float, float, float, float] | None  # a, b, c, d of the removed plane (None: none removed)


def _o3d():
    try:
        import open3d as o3d
    except ImportError as exc:  # the '3d' extra
        raise PointCloudError("open3d", "3D preprocessing needs open3d (the '3d' extra: pip install "
                                        "'defectscope[3d]')") from exc
    return o3d


def _ring(h: int, w: int, fraction: float) -> np.ndarray:
    r = max(2, round(fraction * min(h, w)))
    ring = np.zeros((h, w), bool)
    ring[:r], ring[-r:], ring[:, :r], ring[:, -r:] = True, True, True, True
    return ring


def foreground_mask(xyz: np.ndarray, cfg: PrepConfig = PrepConfig()) -> tuple[np.ndarray, tuple | None]:
    """(H x W bool part mask, plane or None) of an organised cloud at its own resolution."""
    o3d = _o3d()
    o3d.utility.random.seed(0)  # RANSAC: the same cloud gives the same foreground every time
    valid = valid_points(xyz)
    if not cfg.remove_background:
        return valid, None
    pts = xyz[valid].astype(np.float64)
    extent = float(np.linalg.norm(pts.max(0) - pts.min(0))) or 1.0
    ring = _ring(*valid.shape, cfg.ring_fraction) & valid
    keep = valid.copy()
    plane = None
    if ring.sum() >= 50:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[ring].astype(np.float64)))
        model, inliers = pcd.segment_plane(cfg.plane_distance * extent, 3, 500)
        if len(inliers) >= 0.5 * ring.sum():  # a plane really is there
            a, b, c, d = (float(v) for v in model)
            dist = np.abs(xyz[..., 0] * a + xyz[..., 1] * b + xyz[..., 2] * c + d) / (np.sqrt(a * a + b * b + c * c)
                                                                                      or 1.0)
            off_plane = valid & (dist > cfg.plane_distance * extent)
            if off_plane.sum() >= 0.02 * valid.sum():  # else the "background" was the part itself
                keep, plane = off_plane, (a, b, c, d)
    ys, xs = np.nonzero(keep)
    if len(xs) > cfg.dbscan_min_points:
        sel = np.arange(len(xs))
        if len(sel) > cfg.max_dbscan_points:
            sel = np.random.default_rng(0).choice(len(sel), cfg.max_dbscan_points, replace=False)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[ys[sel], xs[sel]].astype(np.float64)))
        labels = np.asarray(pcd.cluster_dbscan(cfg.dbscan_eps * extent, cfg.dbscan_min_points))
        if (labels >= 0).any():
            biggest = np.bincount(labels[labels >= 0]).argmax()
            part = np.zeros_like(keep)
            part[ys[sel[labels == biggest]], xs[sel[labels == biggest]]] = True
            if len(sel) < len(xs):  # subsampled: the part is the closed region the kept samples cover
                part = cv2.morphologyEx(part.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0
                part &= keep
            keep = part
    return keep, plane


def resample(xyz: np.ndarray, mask: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of an organised cloud (and its mask) to grid x grid; zeros stay zeros."""
    out = cv2.resize(np.where(mask[..., None], xyz, 0).astype(np.float32), (grid, grid),
                     interpolation=cv2.INTER_NEAREST)
    m = cv2.resize(mask.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST) > 0
    return out, m


def prepare(xyz: np.ndarray, cfg: PrepConfig = PrepConfig()) -> Prepared:
    fg, plane = foreground_mask(xyz, cfg)
    out, m = resample(xyz, fg, cfg.grid)
    return Prepared(out, m, plane)


def _cache_key(path: Path, cfg: PrepConfig) -> str:
    st = path.stat()
    ident = json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, asdict(cfg)])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def prepare_file(path: str | Path, cfg: PrepConfig = PrepConfig(), cache_dir: str | Path | None = None) -> Prepared:
    """`prepare` of an xyz TIFF or depth map, through an .npz cache in `cache_dir` when given (written atomically)."""
    p = Path(path)
    cached = None
    if cache_dir is not None and p.is_file():
        cached = Path(cache_dir) / f"{_cache_key(p, cfg)}.npz"
        if cached.is_file():
            try:
                with np.load(cached) as z:
                    plane = tuple(float(v) for v in z["plane"]) if z["plane"].size else None
                    return Prepared(z["xyz"], z["foreground"], plane)  # type: ignore[arg-type]
            except (OSError, ValueError, KeyError):
                pass  # damaged cache entry: recompute and overwrite it
    prepared = prepare(read_cloud(p), cfg)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, xyz=prepared.xyz, foreground=prepared.foreground,
                 plane=np.asarray(prepared.plane if prepared.plane else [], np.float64))
        atomic_write_bytes(cached, buffer.getvalue())
    return prepared
