"""The embedded demo dataset: a small MVTec-AD-layout inspection set that DefectScope generates itself.

Shipping real images would bloat the installer and tie us to third-party licences, so on first use the app
renders a procedural dataset instead: a few textured surfaces and a few objects, every good image a little
different (noise, lighting, pose) so that it is a genuine anomaly-detection problem, and defect images whose
pixel masks are computed from the very footprint the defect was painted with.

Layout (exactly what the MVTec reader expects)::

    ROOT/<category>/train/good/NNN.png
    ROOT/<category>/test/good/NNN.png
    ROOT/<category>/test/<defect>/NNN.png
    ROOT/<category>/ground_truth/<defect>/NNN_mask.png   (uint8 0/255, one channel, image size)
    ROOT/README.txt   what this is and how it was made
    ROOT/demo.json    generator version, seed, categories, counts: decides whether a copy is current

Every image is rendered from its own random stream, keyed by (seed, category, split, defect, index), so the
output is byte-identical on rerun and independent of the counts asked for or the order of rendering.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import DatasetError
from engine.fsutil import atomic_swap_dir, check_replaceable, staging_dir, sweep_stale_staging
from engine.home import default_data_home

# Bump whenever the rendered pixels, the layout or the manifest change: existing copies are then regenerated.
DEMO_VERSION: int = 2

MANIFEST_NAME = "demo.json"
README_NAME = "README.txt"
GENERATOR_NAME = "defectscope.demo"

# What ensure_demo_dataset() builds; a module-level dict so tests can shrink it.
DEFAULT_CONFIG: dict[str, Any] = {
    "n_train": 40,
    "n_test_good": 10,
    "n_test_defect_per_type": 6,
    "image_size": 256,
    "seed": 0,
}

# Defect masks outside these area fractions are re-drawn: tiny ones are invisible, huge ones trivial.
MIN_DEFECT_AREA = 0.001
MAX_DEFECT_AREA = 0.06

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


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 1) -> np.ndarray:
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


def _streaks(rng: np.random.Generator, h: int, w: int, along: float, across: float) -> np.ndarray:
    """Horizontal anisotropic noise: correlated over `along` px in x, over `across` px in y."""
    gh, gw = max(2, round(h / max(across, 1.0))), max(2, round(w / along) + 1)
    g = rng.standard_normal((gh, gw), dtype=np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return (out - out.mean()) / max(float(out.std()), 1e-6)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _rotate(img: np.ndarray, degrees: float, out_size: int) -> np.ndarray:
    """Rotate a (larger) canvas about its centre and crop the central out_size square."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    m[:, 2] -= ((w - out_size) / 2.0, (h - out_size) / 2.0)
    return cv2.warpAffine(img, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _lighting(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """A gain field: random linear gradient plus soft vignette, as from an off-axis lamp."""
    xs, ys = _grid(size)
    u, v = xs / size - 0.5, ys / size - 0.5
    a = rng.uniform(0, 2 * np.pi)
    grad = np.cos(a) * u + np.sin(a) * v
    vignette = u * u + v * v
    return 1.0 + strength * (grad * rng.uniform(0.6, 1.0) * 2.0 - vignette * rng.uniform(0.3, 0.8))


def _draw_polylines(size: int, curves: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Anti-aliased curves (points N x 2 float, thickness) as coverage in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    for pts, thickness in curves:
        fixed = np.round(pts * 16.0).astype(np.int32).reshape(-1, 1, 2)  # shift=4: sub-pixel positions
        cv2.polylines(canvas, [fixed], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _place(
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


def _colour(value: Any, channels: int) -> np.ndarray:
    c = np.asarray(value, np.float32).reshape(-1)
    if channels == 1:
        return c[:1] if c.size == 1 else np.array([c.mean()], np.float32)
    return c if c.size == 3 else np.repeat(c[:1], 3)


def _threshold_alpha(alpha: np.ndarray, at: float = 0.25) -> np.ndarray:
    """Drop the faint fringe so that mask = alpha > 0 covers every changed pixel and no untouched one."""
    return np.where(alpha >= at, alpha, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# Defects. `s` is the image scale (image_size / 256): sizes below are given for a 256 px image.


@register_defect("scratch")
def _scratch(
    part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]
) -> tuple[np.ndarray, Image]:
    size = part.image.shape[0]
    length = rng.uniform(*p.get("length", (70.0, 140.0))) * s
    # On textures keep most of the curve inside the frame; objects pass a small margin of their own.
    centre = _place(part, rng, margin=p["margin"] * s if "margin" in p else length * 0.35)
    base_angle = p.get("angle")
    angle = rng.uniform(0, np.pi) if base_angle is None else base_angle + rng.uniform(-0.6, 0.6)
    d = np.array([np.cos(angle), np.sin(angle)], np.float32)
    nrm = np.array([-d[1], d[0]], np.float32)
    p0, p2 = centre - d * length / 2, centre + d * length / 2
    p1 = centre + nrm * length * rng.uniform(-0.3, 0.3)
    thickness = 2 if rng.random() < p.get("thick_prob", 0.35) else 1
    alpha = _draw_polylines(size, [(_bezier(p0, p1, p2), max(1, round(thickness * s)))])
    # Real scratches fade out at both ends; the fade follows the projection on the chord.
    xs, ys = _grid(size)
    along = ((xs - centre[0]) * d[0] + (ys - centre[1]) * d[1]) / (length / 2)
    alpha *= np.clip((1.0 - np.abs(along)) * 4.0, 0.45, 1.0) * p.get("opacity", 1.0)
    alpha = _threshold_alpha(alpha * part.support)
    tone = float(rng.uniform(*p.get("tone", (0.2, 0.3))))
    if rng.random() < p.get("dark_prob", 0.0):
        tone = -tone
    target = np.clip(part.image + tone, 0, 1)
    return alpha, target


@register_defect("dent")
def _dent(part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]) -> tuple[np.ndarray, Image]:
    size = part.image.shape[0]
    a = rng.uniform(*p.get("radius", (9.0, 18.0))) * s
    b = a * rng.uniform(0.55, 1.0)
    c = _place(part, rng, margin=a + 2)
    t = rng.uniform(0, np.pi)
    xs, ys = _grid(size)
    dx, dy = xs - c[0], ys - c[1]
    u = (dx * np.cos(t) + dy * np.sin(t)) / a
    v = (-dx * np.sin(t) + dy * np.cos(t)) / b
    r2 = u * u + v * v
    inside = r2 < 1.0
    depth = np.where(inside, (1.0 - r2) ** 2, 0.0).astype(np.float32)
    gy, gx = np.gradient(-depth)
    # Lambert shading of the depressed height field, light from the upper left: the wall facing the lamp
    # brightens, the other darkens, and the floor is a little darker than the surrounding surface.
    lx, ly = -0.6, -0.8
    shade = -(gx * lx + gy * ly)
    shade /= max(float(np.abs(shade).max()), 1e-6)
    amp = rng.uniform(*p.get("strength", (0.25, 0.4)))
    gain = 1.0 + amp * shade - p.get("darken", 0.08) * depth
    alpha = (inside & part.support).astype(np.float32)
    target = np.clip(part.image * gain[..., None], 0, 1)
    return alpha, target


@register_defect("stain")
def _stain(part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]) -> tuple[np.ndarray, Image]:
    size, channels = part.image.shape[0], part.image.shape[2]
    r = rng.uniform(*p.get("radius", (14.0, 26.0))) * s
    c = _place(part, rng, margin=r * 0.8)
    xs, ys = _grid(size)
    t = rng.uniform(0, np.pi)
    dx, dy = xs - c[0], ys - c[1]
    el = rng.uniform(0.6, 1.0)
    u = (dx * np.cos(t) + dy * np.sin(t)) / r
    v = (-dx * np.sin(t) + dy * np.cos(t)) / (r * el)
    # Irregular outline: a radial falloff perturbed by smooth noise, thresholded with a soft ramp.
    fld = 1.0 - np.sqrt(u * u + v * v) + 0.25 * _noise(rng, size, size, cell=max(r / 1.5, 3.0), octaves=2)
    raw = _smoothstep(0.0, rng.uniform(0.25, 0.5), fld)
    alpha = np.clip((raw - 0.25) / 0.75, 0.0, 1.0) * part.support
    # Drying stains collect pigment at the rim (coffee ring), which keeps them faint but visible.
    ring = p.get("ring", 0.0) * np.exp(-(((raw - 0.45) / 0.2) ** 2))
    opacity = rng.uniform(*p.get("opacity", (0.25, 0.4)))
    alpha = np.clip(alpha * opacity * (1.0 + ring), 0.0, 1.0).astype(np.float32)
    colour = _colour(p.get("colour", (0.45, 0.35, 0.25)), channels)
    target = part.image * colour
    return alpha, target


@register_defect("crack")
def _crack(part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]) -> tuple[np.ndarray, Image]:
    size = part.image.shape[0]
    length = rng.uniform(*p.get("length", (60.0, 110.0))) * s
    step = 2.5 * s
    start = _place(part, rng, margin=p["margin"] * s if "margin" in p else length * 0.3)
    base_angle = p.get("angle")
    heading = rng.uniform(0, 2 * np.pi) if base_angle is None else base_angle + rng.uniform(-0.3, 0.3)
    if base_angle is not None and rng.random() < 0.5:
        heading += np.pi

    def walk(origin: np.ndarray, theta: float, n: int) -> np.ndarray:
        angles = theta + np.cumsum(rng.normal(0.0, p.get("wiggle", 0.28), n))
        steps = np.stack([np.cos(angles), np.sin(angles)], axis=1) * step
        return np.vstack([origin[None], origin + np.cumsum(steps, axis=0)]).astype(np.float32)

    n = max(4, int(length / step))
    trunk = walk(start, heading, n)
    curves = [(trunk[: n // 2], max(1, round(2 * s))), (trunk[n // 2 - 1 :], max(1, round(s)))]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(n // 5, n))
        side = 1.0 if rng.random() < 0.5 else -1.0
        branch = walk(
            trunk[k], heading + side * rng.uniform(0.5, 1.1), max(3, int(n * rng.uniform(0.2, 0.45)))
        )
        curves.append((branch, max(1, round(s))))
    alpha = _threshold_alpha(_draw_polylines(size, curves) * part.support)
    darkness = rng.uniform(*p.get("darkness", (0.55, 0.75)))
    target = part.image * (1.0 - darkness)
    return alpha, target


def _broken_piece(
    part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any], on_edge: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(region that is gone, thin fractured rim around it), both bool and inside the object."""
    size = part.image.shape[0]
    r = rng.uniform(*p.get("radius", (8.0, 14.0))) * s
    if on_edge:
        # Centre on the object's outline so the bite takes a chunk of its silhouette.
        edge = part.coverage & ~cv2.erode(part.coverage.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(
            bool
        )
        edge &= cv2.dilate(part.support.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        c = _place(part, rng, 0.0, where=edge) if edge.any() else _place(part, rng, r)
    else:
        c = _place(part, rng, margin=r)
    xs, ys = _grid(size)
    dist = np.sqrt((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / r
    cell = max(p.get("ragged_cell", 4.0) * s, 1.5)
    ragged = dist + p.get("ragged", 0.25) * _noise(rng, size, size, cell=cell)
    gone = ((ragged < 1.0) & part.coverage).astype(np.uint8)
    # Fractures leave a jagged but connected edge, not loose pixel dust.
    gone = cv2.morphologyEx(
        gone, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    ).astype(bool)
    rim_px = max(1, round(p.get("rim", 2.0) * s))
    grown = cv2.dilate(gone.astype(np.uint8), np.ones((2 * rim_px + 1,) * 2, np.uint8)).astype(bool)
    rim = grown & ~gone & part.coverage
    return gone, rim


@register_defect("missing")
def _missing(
    part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]
) -> tuple[np.ndarray, Image]:
    assert part.background is not None, "a 'missing' defect needs a category that renders its background"
    gone, rim = _broken_piece(part, rng, s, p, on_edge=True)
    fractured = part.image * p.get("rim_gain", 0.7)
    target = np.where(gone[..., None], part.background, fractured)
    return (gone | rim).astype(np.float32), target


@register_defect("hole")
def _hole(part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]) -> tuple[np.ndarray, Image]:
    assert part.background is not None, "a 'hole' defect needs a category that renders its background"
    gone, rim = _broken_piece(part, rng, s, p, on_edge=False)
    # Torn fibres: the rim is the surface pulled and shadowed into the hole.
    fractured = part.image * p.get("rim_gain", 0.6)
    target = np.where(gone[..., None], part.background, fractured)
    return (gone | rim).astype(np.float32), target


# --------------------------------------------------------------------------------------------------------------
# Categories


def _texture_part(img: Image, background: Image | None = None) -> Part:
    full = np.ones(img.shape[:2], bool)
    return Part(img.astype(np.float32), full, full, background)


@register_category(
    "brushed_metal",
    kind="texture",
    channels=1,
    description="Brushed steel sheet: anisotropic streak noise along a slightly rotated brushing direction, "
    "a broad specular sheen and an uneven lamp.",
    defects={
        "scratch": {
            "angle": np.pi / 2,
            "tone": (0.22, 0.35),
            "dark_prob": 0.3,
            "note": "thin bright or dark curved line across the brushing, fading at the ends",
        },
        "dent": {"strength": (0.3, 0.45), "note": "small elliptical depression, lit from the upper left"},
        "stain": {
            "colour": 0.62,
            "ring": 0.8,
            "opacity": (0.3, 0.45),
            "note": "faint dark oil/water blotch with a soft, slightly darker rim",
        },
    },
)
def _brushed_metal(rng: np.random.Generator, size: int) -> Part:
    pad = int(size * 1.45)
    fine = _streaks(rng, pad, pad, along=pad / 3.0, across=1.0)
    mid = _streaks(rng, pad, pad, along=pad / 1.5, across=4.0)
    tex = _rotate(0.045 * fine + 0.035 * mid, rng.uniform(-4.0, 4.0), size)
    xs, ys = _grid(size)
    a = rng.uniform(0.5, 1.1)
    d = (xs * np.cos(a) + ys * np.sin(a)) / size - rng.uniform(0.3, 1.0)
    sheen = rng.uniform(0.08, 0.16) * np.exp(-(d**2) / (2 * rng.uniform(0.15, 0.3) ** 2))
    blotch = 0.02 * _noise(rng, size, size, cell=size / 3)
    img = (rng.uniform(0.47, 0.58) + tex + sheen + blotch) * _lighting(rng, size, 0.12)
    return _texture_part(np.clip(img, 0, 1)[..., None])


@register_category(
    "woven_fabric",
    kind="texture",
    channels=1,
    description="Plain-weave cloth: interlaced warp and weft threads with per-thread brightness, jittered "
    "thread paths, fibre fuzz and a slight rotation.",
    defects={
        "hole": {
            "radius": (8.0, 13.0),
            "ragged": 0.35,
            "ragged_cell": 2.5,
            "rim": 2.0,
            "note": "ragged hole showing the dark backing, with a shadowed torn rim",
        },
        "stain": {
            "colour": 0.45,
            "opacity": (0.5, 0.65),
            "radius": (14.0, 24.0),
            "note": "soft, irregular darker patch soaked into the weave",
        },
        "scratch": {
            "tone": (0.25, 0.35),
            "length": (50.0, 100.0),
            "thick_prob": 0.8,
            "note": "snagged thread: a thin bright curved line lying over the weave",
        },
    },
    noise_sigma=0.015,
)
def _woven_fabric(rng: np.random.Generator, size: int) -> Part:
    period = size / rng.uniform(24.0, 28.0)
    xs, ys = _grid(size)
    # The cloth lies slightly askew: evaluate the weave in rotated coordinates (no resampling blur).
    a = np.deg2rad(rng.uniform(-3.0, 3.0))
    xr = np.cos(a) * xs - np.sin(a) * ys
    yr = np.sin(a) * xs + np.cos(a) * ys
    # Threads are never perfectly straight: smooth displacement of the weave coordinates.
    jx = 0.12 * period * _noise(rng, size, size, cell=period * 6)
    jy = 0.12 * period * _noise(rng, size, size, cell=period * 6)
    u, v = (xr + jx) / period, (yr + jy) / period
    fl_u, fl_v = np.floor(u), np.floor(v)
    fu, fv = u - fl_u, v - fl_v
    iu, iv = fl_u.astype(np.int32), fl_v.astype(np.int32)
    n = int(2 * size / period) + 4
    warp_b = 1.0 + 0.07 * rng.standard_normal(n).astype(np.float32)
    weft_b = 1.0 + 0.07 * rng.standard_normal(n).astype(np.float32)
    sin_u, sin_v = np.sin(np.pi * fu), np.sin(np.pi * fv)
    across_u, across_v = np.sqrt(sin_u), np.sqrt(sin_v)  # round thread cross-section
    warp_on_top = ((iu + iv) & 1) == 0
    warp = warp_b[np.mod(iu, n)] * (0.3 + 0.7 * across_u) * (0.75 + 0.25 * sin_v)
    weft = weft_b[np.mod(iv, n)] * (0.3 + 0.7 * across_v) * (0.75 + 0.25 * sin_u)
    tex = np.where(warp_on_top, warp, weft) + 0.05 * _noise(rng, size, size, cell=1.5)
    img = (rng.uniform(0.5, 0.6) * tex + 0.04) * _lighting(rng, size, 0.15)
    backing = np.full((size, size, 1), 0.06, np.float32) + 0.02 * _noise(rng, size, size, cell=4)[..., None]
    return _texture_part(np.clip(img, 0, 1)[..., None], np.clip(backing, 0, 1))


@register_category(
    "wood",
    kind="texture",
    channels=3,
    description="Flat-sawn wood veneer: warped growth rings with dark late-wood bands, fibre streaks along "
    "the grain, per-board colour and lighting.",
    defects={
        "crack": {
            "angle": 0.0,
            "wiggle": 0.18,
            "length": (70.0, 120.0),
            "note": "dark branching split running roughly along the grain",
        },
        "stain": {
            "colour": (0.55, 0.5, 0.5),
            "ring": 0.6,
            "opacity": (0.35, 0.5),
            "radius": (14.0, 26.0),
            "note": "greyish water mark with a soft darker rim",
        },
        "scratch": {
            "tone": (0.12, 0.2),
            "length": (70.0, 130.0),
            "note": "thin lighter line across the grain where the finish is scraped",
        },
    },
)
def _wood(rng: np.random.Generator, size: int) -> Part:
    xs, ys = _grid(size)
    # Growth rings bend gently, mostly along the board: a warp field stretched in x keeps them near-parallel.
    pad = size * 2
    warp = cv2.resize(
        _noise(rng, size, pad, cell=size / 2.0, octaves=2), (size, size), interpolation=cv2.INTER_AREA
    )
    rings = rng.uniform(8.0, 13.0)
    t = ys / size * rings + xs / size * rng.uniform(-1.5, 1.5) + rng.uniform(0.25, 0.5) * warp
    t += 0.08 * _noise(rng, size, size, cell=size / 8.0)
    t += rng.uniform(0, 1)
    f = t - np.floor(t)
    late = _smoothstep(0.7, 0.9, f) * (1.0 - _smoothstep(0.93, 1.0, f))
    fibres = _streaks(rng, size, size, along=size / 4.0, across=1.0)
    pores = _streaks(rng, size, size, along=size / 12.0, across=2.0)
    light = np.array([0.78, 0.58, 0.38], np.float32) * rng.uniform(0.9, 1.08)
    dark = np.array([0.52, 0.33, 0.18], np.float32) * rng.uniform(0.9, 1.08)
    mix = np.clip(0.6 * late + 0.06 * warp + 0.15 + 0.1 * fibres, 0, 1)[..., None]
    img = light * (1 - mix) + dark * mix
    img *= (1.0 + 0.05 * fibres + 0.03 * pores)[..., None]
    img *= _lighting(rng, size, 0.12)[..., None]
    return _texture_part(np.clip(img, 0, 1))


def _object_part(image: Image, cov: np.ndarray, background: Image, s: float) -> Part:
    coverage = cov > 0.0
    # Surface defects stay clear of the silhouette by a couple of pixels, so they are "on" the object.
    k = max(3, 2 * round(2 * s) + 1)
    support = cv2.erode((cov > 0.99).astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    return Part(image.astype(np.float32), support, coverage, background.astype(np.float32))


def _drop_shadow(cov: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    shift = np.float32([[1, 0, rng.uniform(3, 6) * s], [0, 1, rng.uniform(4, 7) * s]])
    moved = cv2.warpAffine(cov, shift, cov.shape[::-1])
    return cv2.GaussianBlur(moved, (0, 0), 6 * s)


@register_category(
    "washer",
    kind="object",
    channels=3,
    description="Steel flat washer on a dark rubber belt: concentric turning marks, a bevel that catches the "
    "lamp, a soft drop shadow; random position, slight tilt and lamp direction.",
    defects={
        "scratch": {
            "tone": (0.22, 0.32),
            "length": (40.0, 70.0),
            "dark_prob": 0.4,
            "margin": 4.0,
            "note": "short thin bright or dark line on the ring",
        },
        "dent": {
            "radius": (8.0, 13.0),
            "strength": (0.3, 0.45),
            "note": "small shaded ding in the ring face",
        },
        "missing": {
            "radius": (9.0, 15.0),
            "rim_gain": 0.65,
            "note": "a bite broken out of the outer or inner edge, belt visible through it",
        },
    },
)
def _washer(rng: np.random.Generator, size: int) -> Part:
    s = size / 256.0
    xs, ys = _grid(size)
    cx = size / 2 + rng.normal(0, 0.025 * size)
    cy = size / 2 + rng.normal(0, 0.025 * size)
    outer = size * rng.uniform(0.35, 0.37)
    inner = outer * rng.uniform(0.44, 0.48)
    # Slight out-of-plane tilt squashes the ring into an ellipse along a random axis.
    phi = rng.uniform(0, np.pi)
    squash = rng.uniform(0.96, 1.0)
    dx, dy = xs - cx, ys - cy
    a = dx * np.cos(phi) + dy * np.sin(phi)
    b = (-dx * np.sin(phi) + dy * np.cos(phi)) / squash
    d = np.sqrt(a * a + b * b)
    theta = np.arctan2(dy, dx)
    cov = np.clip(outer - d + 0.5, 0, 1) * np.clip(d - inner + 0.5, 0, 1)

    belt = np.array([0.15, 0.17, 0.19], np.float32) * rng.uniform(0.85, 1.15)
    bg_tex = 1.0 + 0.1 * _noise(rng, size, size, cell=5 * s) + 0.06 * _noise(rng, size, size, cell=1.2)
    background = belt * (bg_tex * _lighting(rng, size, 0.25))[..., None]
    background_shadowed = background * (1.0 - 0.55 * _drop_shadow(cov.astype(np.float32), s, rng))[..., None]

    lamp = rng.uniform(-2.6, -1.6)  # upper-left-ish
    turning = np.interp(
        d, np.arange(size), cv2.GaussianBlur(rng.standard_normal((size, 1)), (0, 0), 0.7)[:, 0]
    )
    sheen = 0.16 * np.cos(2 * (theta - lamp))  # turning marks reflect in two opposite lobes
    bevel_w = 3.0 * s
    outer_bevel = np.clip(1 - (outer - d) / bevel_w, 0, 1)
    inner_bevel = np.clip(1 - (d - inner) / bevel_w, 0, 1)
    facing = np.cos(theta - lamp)
    metal = rng.uniform(0.5, 0.6) + sheen + 0.035 * turning
    metal += 0.3 * facing * (outer_bevel - inner_bevel)
    metal += 0.02 * _noise(rng, size, size, cell=6 * s)
    tint = np.array([0.97, 0.99, 1.03], np.float32) * rng.uniform(0.92, 1.08)
    metal_rgb = np.clip(metal, 0.05, 1.0)[..., None] * tint
    img = background_shadowed * (1 - cov[..., None]) + metal_rgb * cov[..., None]
    return _object_part(np.clip(img, 0, 1), cov, np.clip(background, 0, 1), s)


@register_category(
    "pill",
    kind="object",
    channels=3,
    description="Oblong cream tablet with red speckles and an embossed 'DS' imprint on a dark tray: dome "
    "shading with a highlight, random small rotation, shift and speckle pattern.",
    defects={
        "stain": {
            "colour": (0.8, 0.5, 0.35),
            "radius": (9.0, 15.0),
            "opacity": (0.45, 0.6),
            "note": "brownish-pink discolouration with soft edges",
        },
        "crack": {
            "length": (60.0, 95.0),
            "darkness": (0.55, 0.75),
            "margin": 10.0,
            "note": "thin dark branching fracture line across the tablet",
        },
        "missing": {
            "radius": (10.0, 16.0),
            "rim_gain": 0.75,
            "note": "a chip broken off the tablet's edge, tray visible, darker fractured rim",
        },
    },
)
def _pill(rng: np.random.Generator, size: int) -> Part:
    s = size / 256.0
    xs, ys = _grid(size)
    cx = size / 2 + rng.normal(0, 0.02 * size)
    cy = size / 2 + rng.normal(0, 0.02 * size)
    ang_deg = rng.uniform(-6, 6)
    ang = np.deg2rad(ang_deg)
    half_len = size * rng.uniform(0.31, 0.33)
    half_w = size * rng.uniform(0.16, 0.175)
    dx, dy = xs - cx, ys - cy
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    q = np.maximum(np.abs(u) - (half_len - half_w), 0)
    sd = np.sqrt(q * q + v * v) - half_w  # signed distance to the stadium outline
    cov = np.clip(0.5 - sd, 0, 1).astype(np.float32)

    tray = np.array([0.1, 0.1, 0.11], np.float32) * rng.uniform(0.85, 1.2)
    background = tray * (1.0 + 0.12 * _noise(rng, size, size, cell=3 * s))[..., None]
    background = background * _lighting(rng, size, 0.2)[..., None]
    background_shadowed = background * (1.0 - 0.6 * _drop_shadow(cov, s, rng))[..., None]

    inside = np.clip(-sd / half_w, 0, 1)
    dome = np.sqrt(1.0 - (1.0 - inside) ** 2)
    hx, hy = -0.35 * half_len, -0.35 * half_w
    highlight = np.exp(-((u - hx) ** 2 / (0.5 * half_len) ** 2 + (v - hy) ** 2 / (0.5 * half_w) ** 2))
    shade = 0.72 + 0.22 * dome + 0.08 * highlight + 0.02 * _noise(rng, size, size, cell=2 * s)
    cream = np.array([0.95, 0.9, 0.82], np.float32) * rng.uniform(0.95, 1.03)
    pill = shade[..., None] * cream

    # Speckles: a handful of small red dots scattered over the tablet (a few cv2 calls, not per pixel).
    speck = np.zeros((size, size), np.float32)
    inner_pts = np.flatnonzero(sd.ravel() < -4 * s)
    for k in inner_pts[rng.integers(0, inner_pts.size, int(rng.integers(25, 45)))]:
        cv2.circle(
            speck,
            (int(k % size), int(k // size)),
            max(1, round(rng.uniform(0.6, 1.6) * s)),
            1.0,
            -1,
            cv2.LINE_AA,
        )
    speck = cv2.GaussianBlur(speck, (0, 0), 0.6 * s) * rng.uniform(0.6, 0.85)
    pill = pill * (1 - speck[..., None]) + np.array([0.72, 0.22, 0.18], np.float32) * speck[..., None]

    # Imprint: drawn upright on its own canvas, then rotated and shifted with the tablet.
    text = np.zeros((size, size), np.uint8)
    scale, thick = 1.25 * s, max(1, round(3 * s))
    (tw, th), _ = cv2.getTextSize("DS", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.putText(
        text,
        "DS",
        (int(size / 2 - tw / 2), int(size / 2 + th / 2)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        255,
        thick,
        cv2.LINE_AA,
    )
    m = cv2.getRotationMatrix2D((size / 2, size / 2), -ang_deg, 1.0)
    m[:, 2] += (cx - size / 2, cy - size / 2)
    text = cv2.warpAffine(text, m, (size, size)).astype(np.float32) * (0.55 / 255.0)
    pill = pill * (1 - text[..., None]) + (pill * np.array([0.55, 0.5, 0.48], np.float32)) * text[..., None]

    img = background_shadowed * (1 - cov[..., None]) + pill * cov[..., None]
    return _object_part(np.clip(img, 0, 1), cov, np.clip(background, 0, 1), s)


# --------------------------------------------------------------------------------------------------------------
# Rendering one sample


@dataclass(frozen=True)
class DemoSample:
    """One rendered demo image: image/clean are H x W (grayscale) or H x W x 3 RGB uint8; mask is 0/255."""

    image: np.ndarray
    mask: np.ndarray
    clean: np.ndarray  # the same part, same sensor noise, without the defect (== image for good samples)
    coverage: np.ndarray  # bool: pixels the object covers (everything for textures)


def _key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, category: str, split: str, defect: str, index: int, stream: int) -> np.random.Generator:
    entropy = [int(seed), _key(category), _key(split), _key(defect), int(index), int(stream)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _to_uint8(img: Image, channels: int) -> np.ndarray:
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out[..., 0] if channels == 1 else out


def render_sample(
    category: str,
    *,
    split: str = "test",
    defect: str | None = None,
    index: int = 0,
    image_size: int = 256,
    seed: int = 0,
) -> DemoSample:
    """Render one image exactly as generate_demo_dataset writes it (defect=None: a good image)."""
    try:
        spec = CATEGORIES[category]
    except KeyError:
        raise DatasetError(f"unknown demo category '{category}'; known: {', '.join(CATEGORIES)}") from None
    if defect is not None and defect not in spec.defects:
        raise DatasetError(
            f"demo category '{category}' has no defect '{defect}'; known: {', '.join(spec.defects)}"
        )
    label = defect or "good"
    part = spec.render(_rng(seed, category, split, label, index, 0), image_size)
    noise_rng = _rng(seed, category, split, label, index, 2)
    sensor = noise_rng.standard_normal(part.image.shape, dtype=np.float32) * spec.noise_sigma
    clean = _to_uint8(part.image + sensor, spec.channels)
    if defect is None:
        return DemoSample(clean, np.zeros((image_size, image_size), np.uint8), clean, part.coverage)

    rng = _rng(seed, category, split, label, index, 1)
    s = image_size / 256.0
    n_px = image_size * image_size
    fn, params = DEFECTS[defect], spec.defects[defect]
    for _ in range(30):  # re-draw defects that ended up too small (e.g. fell off the object) or too big
        alpha, target = fn(part, rng, s, params)
        area = np.count_nonzero(alpha > 0) / n_px
        if MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA:
            break
    else:
        raise RuntimeError(f"demo {category}/{defect}/{index}: could not place a defect of sensible size")
    mask = alpha > 0
    painted = part.image * (1.0 - alpha[..., None]) + target * alpha[..., None]
    image = _to_uint8(painted + sensor, spec.channels)
    # Outside the mask the defect image is the clean image bit for bit: the mask is the whole truth.
    sel = mask if spec.channels == 1 else mask[..., None]
    image = np.where(sel, image, clean)
    return DemoSample(image, mask.astype(np.uint8) * 255, clean, part.coverage)


# --------------------------------------------------------------------------------------------------------------
# Writing the dataset


def _manifest(
    categories: Sequence[str], n_train: int, n_test_good: int, n_defect: int, size: int, seed: int
) -> dict:
    return {
        "generator": GENERATOR_NAME,
        "version": DEMO_VERSION,
        "seed": seed,
        "image_size": size,
        "categories": {
            name: {
                "kind": CATEGORIES[name].kind,
                "channels": CATEGORIES[name].channels,
                "train_good": n_train,
                "test_good": n_test_good,
                "test_defects": {d: n_defect for d in CATEGORIES[name].defects},
            }
            for name in categories
        },
    }


def _readme(manifest: dict) -> str:
    lines = [
        "DefectScope demo dataset (synthetic)",
        "=" * 36,
        "",
        "Every image in this folder is synthetic: DefectScope rendered it procedurally (numpy/OpenCV noise,",
        "shading and drawing) the first time the demo was needed. No photograph of a real part is included.",
        "It exists so that the app can be tried with no download; results on it say nothing about real",
        "inspection performance.",
        "",
        f"Generator: {manifest['generator']} version {manifest['version']}, seed {manifest['seed']}, "
        f"{manifest['image_size']}x{manifest['image_size']} px. Same version and seed give byte-identical files.",
        "",
        "Layout (MVTec AD):",
        "  <category>/train/good/NNN.png               defect-free training images",
        "  <category>/test/good/NNN.png                defect-free test images",
        "  <category>/test/<defect>/NNN.png            defective test images",
        "  <category>/ground_truth/<defect>/NNN_mask.png  pixel masks (0 = good, 255 = defect), computed from",
        "                                              the exact footprint each defect was painted with",
        "  demo.json                                   generator version, seed, categories and counts",
        "",
        "Good parts vary like real ones (sensor noise, lighting, slight pose), so this is a genuine anomaly-",
        "detection task rather than a search for differences from one template.",
        "",
        "Categories:",
    ]
    for name, info in manifest["categories"].items():
        spec = CATEGORIES[name]
        colour = "grayscale" if spec.channels == 1 else "RGB"
        lines.append(
            f"  {name} ({spec.kind}, {colour}; {info['train_good']} train, {info['test_good']} good test)"
        )
        lines.append(f"    {spec.description}")
        for d, n in info["test_defects"].items():
            lines.append(f"    - {d} ({n}): {spec.defect_notes.get(d, '')}")
    lines.append("")
    return "\n".join(lines)


def _write_png(path: Path, img: np.ndarray) -> None:
    data = img[..., ::-1] if img.ndim == 3 else img  # cv2 encodes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _jobs(manifest: dict) -> list[tuple[str, str, str | None, int]]:
    jobs: list[tuple[str, str, str | None, int]] = []
    for name, info in manifest["categories"].items():
        jobs += [(name, "train", None, i) for i in range(info["train_good"])]
        jobs += [(name, "test", None, i) for i in range(info["test_good"])]
        for d, n in info["test_defects"].items():
            jobs += [(name, "test", d, i) for i in range(n)]
    return jobs


def _write_all(tmp: Path, manifest: dict) -> None:
    size, seed = manifest["image_size"], manifest["seed"]
    for name, info in manifest["categories"].items():
        (tmp / name / "train" / "good").mkdir(parents=True)
        (tmp / name / "test" / "good").mkdir(parents=True)
        for d in info["test_defects"]:
            (tmp / name / "test" / d).mkdir(parents=True)
            (tmp / name / "ground_truth" / d).mkdir(parents=True)

    def one(job: tuple[str, str, str | None, int]) -> None:
        name, split, defect, i = job
        sample = render_sample(name, split=split, defect=defect, index=i, image_size=size, seed=seed)
        _write_png(tmp / name / split / (defect or "good") / f"{i:03d}.png", sample.image)
        if defect is not None:
            _write_png(tmp / name / "ground_truth" / defect / f"{i:03d}_mask.png", sample.mask)

    # numpy and OpenCV release the GIL in the heavy calls, so two threads use both cores; every image has
    # its own random stream, so the output does not depend on scheduling.
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in pool.map(one, _jobs(manifest)):
            pass
    finally:
        # On failure or Ctrl+C, drop the queued images instead of rendering them all before unwinding.
        pool.shutdown(wait=True, cancel_futures=True)
    (tmp / README_NAME).write_text(_readme(manifest), encoding="utf-8", newline="\n")
    # Written last: a folder without demo.json is never taken for a finished demo.
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="\n")


def _read_manifest(root: Path) -> dict | None:
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(root: Path, manifest: dict) -> bool:
    found = _read_manifest(root)
    if found != manifest:
        return False
    return all((root / name / "train" / "good").is_dir() for name in manifest["categories"])


def generate_demo_dataset(
    root: Path,
    *,
    categories: Sequence[str] | None = None,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect_per_type: int = 6,
    image_size: int = 256,
    seed: int = 0,
) -> Path:
    """Render the demo dataset into `root` (replacing an earlier demo there) and return `root`.

    Deterministic for a seed. Atomic: everything is written into a hidden sibling folder that is renamed into
    place only when complete, so an interrupted run never leaves something that looks like a dataset.
    """
    return _generate(
        Path(root), categories, n_train, n_test_good, n_test_defect_per_type, image_size, seed, owned=False
    )


def _generate(
    root: Path,
    categories: Sequence[str] | None,
    n_train: int,
    n_test_good: int,
    n_defect: int,
    image_size: int,
    seed: int,
    *,
    owned: bool,
) -> Path:
    names = list(CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise DatasetError(f"unknown demo categories {unknown}; known: {', '.join(CATEGORIES)}")
    if not names:
        raise DatasetError("no demo categories selected")
    if min(n_train, n_test_good, n_defect) < 0:
        raise DatasetError("demo image counts must not be negative")
    if n_train < 1:
        raise DatasetError("the demo needs at least one training image per category")
    if not 64 <= image_size <= 2048:
        raise DatasetError(f"demo image_size must be within 64..2048, got {image_size}")
    if seed < 0:
        raise DatasetError(f"demo seed must be non-negative, got {seed}")
    root = root.expanduser().absolute()
    # Checked before rendering (minutes for the full set) and again at the swap: root may be a user's own data.
    marker = None if owned else MANIFEST_NAME
    check_replaceable(root, marker)
    manifest = _manifest(names, n_train, n_test_good, n_defect, image_size, int(seed))

    tmp = staging_dir(root)
    try:
        _write_all(tmp, manifest)
        try:
            atomic_swap_dir(tmp, root, marker)
        except OSError:
            # Another process may have put a finished demo there meanwhile; that one is as good as ours.
            if not _is_current(root, manifest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_demo_dataset(root: Path | None = None) -> Path:
    """The demo dataset at `root` (default: <data home>/demo), generated only if missing or out of date."""
    owned = root is None
    target = (default_data_home() / "demo") if root is None else Path(root)
    target = target.expanduser().absolute()
    cfg = DEFAULT_CONFIG
    manifest = _manifest(
        list(CATEGORIES),
        cfg["n_train"],
        cfg["n_test_good"],
        cfg["n_test_defect_per_type"],
        cfg["image_size"],
        cfg["seed"],
    )
    if _is_current(target, manifest):
        return target
    sweep_stale_staging(target)
    return _generate(
        target,
        None,
        cfg["n_train"],
        cfg["n_test_good"],
        cfg["n_test_defect_per_type"],
        cfg["image_size"],
        cfg["seed"],
        owned=owned,
    )
