"""The demo generator's building blocks: what a rendered part is, the defect and category registries, and the
vectorised noise / drawing primitives the defect painters (demo_defects) and part renderers (demo_surfaces) share.

numpy + OpenCV only. Sizes scale with the image: primitives take pixel sizes computed by their callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

Image = np.ndarray  # float32 H x W x C in [0, 1], C = 1 or 3

# --------------------------------------------------------------------------------------------------------------
# Registries


@dataclass
class Part:
    """A defect-free render before sensor noise, plus where defects may go.

    support: where a surface defect may land (object pixels away from its edge; the whole frame for textures).
    coverage: every pixel the object touches (a missing piece may take its anti-aliased rim too).
    background: what shows through a hole or missing piece; None when the category has no such defect.
    """

    image: Image
    support: np.ndarray
    coverage: np.ndarray
    background: Image | None = None


# A defect paints onto a Part: it returns (alpha H x W in [0, 1], target image); the composite is
# clean * (1 - alpha) + target * alpha, and the mask is exactly alpha > 0.
DefectFn = Callable[[Part, np.random.Generator, float, Mapping[str, Any]], tuple[np.ndarray, Image]]
RenderFn = Callable[[np.random.Generator, int], Part]


@dataclass(frozen=True)
class CategorySpec:
    """One demo category: how to render a good part, and which defects (with their look) it can have."""

    name: str
    kind: str  # "texture" or "object"
    channels: int  # 1 = saved as a grayscale PNG, 3 = RGB
    render: RenderFn
    defects: Mapping[str, Mapping[str, Any]]
    description: str
    noise_sigma: float = 0.012
    defect_notes: Mapping[str, str] = field(default_factory=dict)


CATEGORIES: dict[str, CategorySpec] = {}
DEFECTS: dict[str, DefectFn] = {}


def register_defect(name: str) -> Callable[[DefectFn], DefectFn]:
    def decorate(fn: DefectFn) -> DefectFn:
        DEFECTS[name] = fn
        return fn

    return decorate


def register_category(
    name: str,
    *,
    kind: str,
    channels: int,
    defects: Mapping[str, Mapping[str, Any]],
    description: str,
    noise_sigma: float = 0.012,
) -> Callable[[RenderFn], RenderFn]:
    """Decorator for a part renderer; `defects` maps defect type -> parameters (incl. a 'note' for the README)."""

    def decorate(fn: RenderFn) -> RenderFn:
        unknown = set(defects) - set(DEFECTS)
        if unknown:
            raise ValueError(f"category {name}: unknown defect types {sorted(unknown)}")
        params = {d: {k: v for k, v in p.items() if k != "note"} for d, p in defects.items()}
        notes = {d: str(p.get("note", "")) for d, p in defects.items()}
        CATEGORIES[name] = CategorySpec(name, kind, channels, fn, params, description, noise_sigma, notes)
        return fn

    return decorate


# --------------------------------------------------------------------------------------------------------------
# Noise and drawing primitives (all vectorised; sizes scale with the image)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 1) -> np.ndarray:
    """Smooth value-like noise with features about `cell` pixels wide, zero mean, unit std."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        c = max(cell / (2**o), 1.0)
        gh, gw = max(2, round(h / c) + 1), max(2, round(w / c) + 1)
        g = rng.standard_normal((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
    std = float(out.std())
    return (out - out.mean()) / (std if std > 1e-6 else 1.0)


def streaks(rng: np.random.Generator, h: int, w: int, along: float, across: float) -> np.ndarray:
    """Horizontal anisotropic noise: correlated over `along` px in x, over `across` px in y."""
    gh, gw = max(2, round(h / max(across, 1.0))), max(2, round(w / along) + 1)
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / max(float(out.std()), 1e-6)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def rotate(img: np.ndarray, degrees: float, out_size: int) -> np.ndarray:
    """Rotate a (larger) canvas about its centre and crop the central out_size square."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    m[:, 2] -= ((w - out_size) / 2.0, (h - out_size) / 2.0)
    return cv2.warpAffine(img, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def lighting(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A gain field: random linear gradient plus soft vignette, as from an off-axis lamp."""
    xs, ys = grid(size)
    u, v = xs / size - 0.5, ys / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    grad = np.cos(a) * u + np.sin(a) * v
    vignette = u * u + v * v
    return 1.0 + strength * (grad * rng.uniform(0.6, 1.0) * 2.0 - vignette * rng.uniform(0.3, 0.8))


def draw_polylines(size: int, curves: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Anti-aliased curves (points N x 2 float, thickness) as coverage in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    for pts, thickness in curves:
        fixed = np.round(pts * 16.0).astype(np.int32).reshape(-1, 1, 2)  # shift=4: sub-pixel positions
        cv2.polylines(canvas, [fixed], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def place(
    part: Part, rng: np.random.Generator, margin: float, where: np.ndarray | None = None
) -> np.ndarray:
    """A random (x, y) inside `where` (default: the support) at least `margin` px from its edge."""
    region = part.support if where is None else where
    size = region.shape[0]
    if region.all():
        lo, hi = margin, size - 1 - margin
        if hi <= lo:
            lo, hi = 0.0, size - 1.0
        return rng.uniform(lo, hi, 2).astype(np.float32)
    dist = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 3)
    ok = np.flatnonzero(dist > margin)
    if ok.size == 0:
        ok = np.flatnonzero(region)
    k = int(ok[rng.integers(ok.size)])
    return np.array([k % size, k // size], np.float32) + rng.uniform(-0.5, 0.5, 2).astype(np.float32)


def as_colour(value: Any, channels: int) -> np.ndarray:
    c = np.asarray(value, np.float32).reshape(-1)
    if channels == 1:
        return c[:1] if c.size == 1 else np.array([c.mean()], np.float32)
    return c if c.size == 3 else np.repeat(c[:1], 3)


def threshold_alpha(alpha: np.ndarray, at: float = 0.25) -> np.ndarray:
    """Drop the faint fringe so that mask = alpha > 0 covers every changed pixel and no untouched one."""
    return np.where(alpha >= at, alpha, 0.0).astype(np.float32)
