"""3D patch features: FPFH descriptors (open3d) of an organised cloud, pooled onto a patch grid.

FPFH (Rusu et al. 2009) describes the local shape around each point by histograms of normal-angle
relations with its neighbours; on MVTec 3D-AD it is a strong training-free 3D feature (BTF, Horwitz & Hoshen
2022). Radii are multiples of the cloud's own grid spacing, so the same model works at any sensor
resolution. Descriptors are averaged per patch cell of the organised grid, giving a (cells x cells x 33) map
aligned with the RGB patch grid; cells without a part point are zero and flagged in the returned mask.
"""

from __future__ import annotations

import numpy as np

from engine.datasets.pointcloud import valid_points

FPFH_DIM = 33


def grid_spacing(xyz: np.ndarray) -> float:
    """Median distance between horizontally or vertically adjacent measured points."""
    v = valid_points(xyz)
    d = []
    for a, b, m in ((xyz[:, 1:], xyz[:, :-1], v[:, 1:] & v[:, :-1]), (xyz[1:], xyz[:-1], v[1:] & v[:-1])):
        if m.any():
            d.append(np.linalg.norm((a - b)[m], axis=-1))
    if not d:
        return 1.0
    s = float(np.median(np.concatenate(d)))
    return s if s > 0 else 1.0


def fpfh_points(points: np.ndarray, spacing: float, normal_radius: float = 4.0, feature_radius: float = 8.0
                ) -> np.ndarray:
    """N x 33 FPFH of N points (radii in multiples of `spacing`); normals face the sensor (-z)."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius * spacing, max_nn=30))
    pcd.orient_normals_towards_camera_location(np.array([0.0, 0.0, float(points[:, 2].min()) - 1e3]))
    f = o3d.pipelines.registration.compute_fpfh_feature(
        pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=feature_radius * spacing, max_nn=100))
    return np.asarray(f.data, np.float32).T


def fpfh_grid(xyz: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(cells x cells x 33 mean FPFH per cell, cells x cells fraction of the cell covered by part points).

    xyz: organised cloud already preprocessed (background zeroed), side a multiple of `cells`.
    """
    h, w = xyz.shape[:2]
    if h % cells or w % cells:
        raise ValueError(f"cloud grid {h} x {w} is not a multiple of {cells} cells")
    v = valid_points(xyz)
    feats = np.zeros((h, w, FPFH_DIM), np.float32)
    if v.sum() >= 10:
        feats[v] = fpfh_points(xyz[v], grid_spacing(xyz))
    ch, cw = h // cells, w // cells
    sums = feats.reshape(cells, ch, cells, cw, FPFH_DIM).sum((1, 3))
    counts = v.reshape(cells, ch, cells, cw).sum((1, 3)).astype(np.float32)
    mean = sums / np.maximum(counts, 1.0)[..., None]
    return mean.astype(np.float32), counts / float(ch * cw)
