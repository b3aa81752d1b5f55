"""A generated RGB + 3D inspection set in the MVTec 3D-AD layout, for the demo and the tests.

Two products: `dome` (a cap-shaped part on a tilted background plate; an object) and `tile` (a raised flat
tile filling most of the view; a surface). Each sample is an organised point cloud (H x W x 3 float32, x / y
in mm on the sensor grid, z = distance from the sensor, zeros where nothing was measured), the matching RGB
image (the part's colour under a near-frontal light, so the shading of a shallow dent changes a pixel by a few
grey levels only: about the camera noise), and a ground-truth mask.

Defect types (a registry, like the 2D demo's):
  dent, bump   3D only (the surface moves by 0.4-0.7 mm; colour unchanged, shading by a few grey levels)
  stain        colour only (the geometry is untouched)
  hole, crack  both (material is gone or grooved, and it is dark)
Good samples vary in pose, colour, texture, sensor noise and missing points (occlusion at the part's rim).

Generation is deterministic per seed and atomic: written to a temporary folder and renamed when complete;
a manifest (demo3d.json) with the generator version lets `ensure_demo3d_dataset` reuse a current copy.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.pointcloud import write_xyz
from engine.fsutil import atomic_swap_dir, check_replaceable, staging_dir, sweep_stale_staging
from engine.home import default_data_home

DEMO3D_VERSION = 2
MANIFEST_NAME = "demo3d.json"
PITCH_MM = 0.25  # sensor grid spacing
SENSOR_DISTANCE_MM = 300.0


@dataclass
class Scene:
    """One sample before defects: height above the sensor's reference (mm), colour, part mask, sensor holes."""

    height: np.ndarray  # H x W float32, mm towards the sensor
    albedo: np.ndarray  # H x W x 3 float32 in 0..1
    part: np.ndarray  # H x W bool
    tilt: tuple[float, float]


DefectFn = Callable[[Scene, np.random.Generator], np.ndarray]  # edits the scene in place, returns the mask
DEFECTS: dict[str, DefectFn] = {}
CATEGORIES: dict[str, Callable[[np.random.Generator, int], Scene]] = {}


def register_defect(name: str) -> Callable[[DefectFn], DefectFn]:
    def deco(fn: DefectFn) -> DefectFn:
        DEFECTS[name] = fn
        return fn

    return deco


def register_category(name: str) -> Callable[[Callable[[np.random.Generator, int], Scene]],
                                             Callable[[np.random.Generator, int], Scene]]:
    def deco(fn: Callable[[np.random.Generator, int], Scene]) -> Callable[[np.random.Generator, int], Scene]:
        CATEGORIES[name] = fn
        return fn

    return deco


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    n = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC)


# ------------------------------------------------------------------------------------------------ products
@register_category("dome")
def _dome(rng: np.random.Generator, size: int) -> Scene:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size / 2 + rng.uniform(-0.06, 0.06) * size, size / 2 + rng.uniform(-0.06, 0.06) * size
    rx, ry = size * rng.uniform(0.3, 0.34), size * rng.uniform(0.28, 0.32)
    r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    part = r2 < 1.0
    height = np.where(part, 10.0 * np.sqrt(np.clip(1 - r2, 0, 1)), 0.0).astype(np.float32)
    base = np.array([0.72, 0.52, 0.30]) * rng.uniform(0.9, 1.1, 3)
    grain = 0.85 + 0.3 * _smooth_noise(rng, size, 12)
    albedo = np.where(part[..., None], base * grain[..., None], np.array([0.25, 0.27, 0.3]))
    return Scene(height, albedo.astype(np.float32), part, (rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)))


@register_category("tile")
def _tile(rng: np.random.Generator, size: int) -> Scene:
    m = int(size * rng.uniform(0.06, 0.1))
    part = np.zeros((size, size), bool)
    part[m : size - m, m : size - m] = True
    wave = 0.3 * (_smooth_noise(rng, size, 4) - 0.5)
    height = np.where(part, 4.0 + wave, 0.0).astype(np.float32)
    tone = rng.uniform(0.5, 0.62)
    grain = 0.9 + 0.2 * _smooth_noise(rng, size, 40)
    albedo = np.where(part[..., None], (tone * grain)[..., None] * np.array([1.0, 0.98, 0.95]),
                      np.array([0.2, 0.2, 0.22]))
    return Scene(height, albedo.astype(np.float32), part, (rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)))


# ------------------------------------------------------------------------------------------------ defects
def _spot_on_part(scene: Scene, rng: np.random.Generator, margin: int) -> tuple[float, float]:
    inner = cv2.erode(scene.part.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    ys, xs = np.nonzero(inner if inner.any() else scene.part)
    k = int(rng.integers(len(xs)))
    return float(xs[k]), float(ys[k])


def _gauss(scene: Scene, rng: np.random.Generator, sign: float) -> np.ndarray:
    size = scene.height.shape[0]
    sigma = size * rng.uniform(0.035, 0.055)
    cx, cy = _spot_on_part(scene, rng, int(3 * sigma))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    scene.height += (sign * rng.uniform(0.4, 0.7) * g * scene.part).astype(np.float32)
    return (g > 0.25) & scene.part


@register_defect("dent")
def _dent(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _gauss(scene, rng, -1.0)


@register_defect("bump")
def _bump(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _gauss(scene, rng, 1.0)


@register_defect("stain")
def _stain(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    size = scene.height.shape[0]
    r = size * rng.uniform(0.04, 0.07)
    cx, cy = _spot_on_part(scene, rng, int(r))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    blob = (((xx - cx) / r) ** 2 + ((yy - cy) / (r * rng.uniform(0.6, 1.0))) ** 2
            + 0.4 * (_smooth_noise(rng, size, 20) - 0.5)) < 1.0
    mask = blob & scene.part
    tint = np.array([0.35, 0.15, 0.1]) if rng.random() < 0.5 else np.array([0.1, 0.25, 0.35])
    scene.albedo[mask] = 0.5 * scene.albedo[mask] + tint
    return mask


@register_defect("hole")
def _hole(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    size = scene.height.shape[0]
    r = size * rng.uniform(0.025, 0.045)
    cx, cy = _spot_on_part(scene, rng, int(2 * r))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r) & scene.part
    scene.height[mask] -= 2.5
    scene.albedo[mask] *= 0.25
    return mask


@register_defect("crack")
def _crack(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    size = scene.height.shape[0]
    x, y = _spot_on_part(scene, rng, int(0.1 * size))
    ang = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(4):
        ang += rng.normal(0, 0.5)
        x, y = x + 0.05 * size * np.cos(ang), y + 0.05 * size * np.sin(ang)
        pts.append((x, y))
    line = np.zeros((size, size), np.uint8)
    cv2.polylines(line, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness=2)
    mask = (line > 0) & scene.part
    scene.height[mask] -= 0.8
    scene.albedo[mask] *= 0.45
    return mask


# ------------------------------------------------------------------------------------------------ rendering
def _shading(height: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(height / PITCH_MM)
    n = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    light = np.array([0.15, -0.2, 0.97])  # near-frontal, like a ring light: shallow slopes barely shade
    return np.clip(0.55 + 0.45 * (n @ (light / np.linalg.norm(light))), 0.0, 1.2).astype(np.float32)


def render(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8, xyz float32) of a scene."""
    size = scene.height.shape[0]
    rgb = scene.albedo * _shading(scene.height)[..., None]
    rgb = rgb + rng.normal(0, 0.01, rgb.shape)
    rgb8 = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x, y = (xx - size / 2) * PITCH_MM, (yy - size / 2) * PITCH_MM
    plane = SENSOR_DISTANCE_MM + scene.tilt[0] * x + scene.tilt[1] * y
    z = plane - scene.height + rng.normal(0, 0.02, scene.height.shape).astype(np.float32)
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    # sensor dropouts: a few small patches at the part's rim (steep flanks reflect away) and random pixels
    rim = (cv2.dilate(scene.part.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & ~(
        cv2.erode(scene.part.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    ys, xs = np.nonzero(rim)
    for k in rng.integers(0, len(xs), size=int(rng.integers(2, 6))):
        cv2.circle(xyz, (int(xs[k]), int(ys[k])), int(rng.integers(2, 5)), (0.0, 0.0, 0.0), -1)
    xyz[rng.random((size, size)) < 0.002] = 0.0
    return rgb8, xyz


def make_sample(category: str, defect: str | None, rng: np.random.Generator, size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb, xyz, mask) of one sample; defect None = good."""
    scene = CATEGORIES[category](rng, size)
    mask = np.zeros((size, size), bool) if defect is None else DEFECTS[defect](scene, rng)
    rgb, xyz = render(scene, rng)
    return rgb, xyz, mask


# ------------------------------------------------------------------------------------------------ writing
DEFAULTS = {"size": 160, "n_train": 40, "n_validation": 8, "n_test_good": 12, "n_test_defect": 6, "seed": 0}


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, parts)).encode())])


def _write(folder: Path, name: str, rgb: np.ndarray, xyz: np.ndarray, mask: np.ndarray | None) -> None:
    for sub in ("rgb", "xyz") + (("gt",) if mask is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(folder / "rgb" / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {folder / 'rgb' / name}.png")
    write_xyz(folder / "xyz" / f"{name}.tiff", xyz)
    if mask is not None:
        cv2.imwrite(str(folder / "gt" / f"{name}.png"), mask.astype(np.uint8) * 255)


def generate_demo3d(root: str | Path, categories: tuple[str, ...] | None = None, **overrides: int) -> Path:
    """Write the set to `root` (replaced atomically); returns root."""
    cfg = {**DEFAULTS, **overrides}
    cats = categories or tuple(CATEGORIES)
    root = Path(root).expanduser().absolute()
    # Checked before writing and again at the swap: root may be a user's own data, never ours to delete.
    check_replaceable(root, MANIFEST_NAME)
    tmp = staging_dir(root)
    try:
        for cat in cats:
            plan = [("train", "good", cfg["n_train"]), ("validation", "good", cfg["n_validation"]),
                    ("test", "good", cfg["n_test_good"])] + [("test", d, cfg["n_test_defect"]) for d in DEFECTS]
            for split, kind, n in plan:
                for i in range(n):
                    rng = _rng(cfg["seed"], cat, split, kind, i)
                    rgb, xyz, mask = make_sample(cat, None if kind == "good" else kind, rng, cfg["size"])
                    _write(tmp / cat / split / kind, f"{i:03d}", rgb, xyz, mask if split == "test" else None)
        manifest = {"generator": "defectscope.demo3d", "version": DEMO3D_VERSION, "categories": list(cats),
                    "config": cfg, "defects": {"3d_only": ["dent", "bump"], "colour_only": ["stain"],
                                               "both": ["hole", "crack"]}}
        # Written last: a folder without the manifest is never taken for a finished set.
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        atomic_swap_dir(tmp, root, MANIFEST_NAME)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_demo3d_dataset(root: str | Path | None = None) -> Path:
    """The 3D demo set at `root` (default: <data home>/demo3d), generated when missing or out of date."""
    target = Path(root) if root is not None else default_data_home() / "demo3d"
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text())
        if manifest.get("version") == DEMO3D_VERSION and manifest.get("config") == DEFAULTS:
            return target
    except (OSError, ValueError):
        pass
    sweep_stale_staging(target)  # what a killed run left beside it
    return generate_demo3d(target)
