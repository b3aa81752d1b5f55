"""Part renderers of the demo dataset, registered as categories: textures (brushed metal, woven fabric, wood)
and objects (washer, pill), each with the defects it can have and how they look on it.
"""

from __future__ import annotations

import cv2
import numpy as np

# Imported first: a category may only name defects that are registered.
from engine.datasets import demo_defects  # noqa: F401
from engine.datasets.demo_parts import (
    Image,
    Part,
    grid,
    lighting,
    noise,
    register_category,
    rotate,
    smoothstep,
    streaks,
)

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
    fine = streaks(rng, pad, pad, along=pad / 3.0, across=1.0)
    mid = streaks(rng, pad, pad, along=pad / 1.5, across=4.0)
    tex = rotate(0.045 * fine + 0.035 * mid, rng.uniform(-4.0, 4.0), size)
    xs, ys = grid(size)
    a = rng.uniform(0.5, 1.1)
    d = (xs * np.cos(a) + ys * np.sin(a)) / size - rng.uniform(0.3, 1.0)
    sheen = rng.uniform(0.08, 0.16) * np.exp(-(d**2) / (2 * rng.uniform(0.15, 0.3) ** 2))
    blotch = 0.02 * noise(rng, size, size, cell=size / 3)
    img = (rng.uniform(0.47, 0.58) + tex + sheen + blotch) * lighting(rng, size, 0.12)
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
    xs, ys = grid(size)
    # The cloth lies slightly askew: evaluate the weave in rotated coordinates (no resampling blur).
    a = np.deg2rad(rng.uniform(-3.0, 3.0))
    xr = np.cos(a) * xs - np.sin(a) * ys
    yr = np.sin(a) * xs + np.cos(a) * ys
    # Threads are never perfectly straight: smooth displacement of the weave coordinates.
    jx = 0.12 * period * noise(rng, size, size, cell=period * 6)
    jy = 0.12 * period * noise(rng, size, size, cell=period * 6)
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
    tex = np.where(warp_on_top, warp, weft) + 0.05 * noise(rng, size, size, cell=1.5)
    img = (rng.uniform(0.5, 0.6) * tex + 0.04) * lighting(rng, size, 0.15)
    backing = np.full((size, size, 1), 0.06, np.float32) + 0.02 * noise(rng, size, size, cell=4)[..., None]
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
    xs, ys = grid(size)
    # Growth rings bend gently, mostly along the board: a warp field stretched in x keeps them near-parallel.
    pad = size * 2
    warp = cv2.resize(
        noise(rng, size, pad, cell=size / 2.0, octaves=2), (size, size), interpolation=cv2.INTER_AREA
    )
    rings = rng.uniform(8.0, 13.0)
    t = ys / size * rings + xs / size * rng.uniform(-1.5, 1.5) + rng.uniform(0.25, 0.5) * warp
    t += 0.08 * noise(rng, size, size, cell=size / 8.0)
    t += rng.uniform(0, 1)
    f = t - np.floor(t)
    late = smoothstep(0.7, 0.9, f) * (1.0 - smoothstep(0.93, 1.0, f))
    fibres = streaks(rng, size, size, along=size / 4.0, across=1.0)
    pores = streaks(rng, size, size, along=size / 12.0, across=2.0)
    light = np.array([0.78, 0.58, 0.38], np.float32) * rng.uniform(0.9, 1.08)
    dark = np.array([0.52, 0.33, 0.18], np.float32) * rng.uniform(0.9, 1.08)
    mix = np.clip(0.6 * late + 0.06 * warp + 0.15 + 0.1 * fibres, 0, 1)[..., None]
    img = light * (1 - mix) + dark * mix
    img *= (1.0 + 0.05 * fibres + 0.03 * pores)[..., None]
    img *= lighting(rng, size, 0.12)[..., None]
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
    xs, ys = grid(size)
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
    bg_tex = 1.0 + 0.1 * noise(rng, size, size, cell=5 * s) + 0.06 * noise(rng, size, size, cell=1.2)
    background = belt * (bg_tex * lighting(rng, size, 0.25))[..., None]
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
    metal += 0.02 * noise(rng, size, size, cell=6 * s)
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
    xs, ys = grid(size)
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
    background = tray * (1.0 + 0.12 * noise(rng, size, size, cell=3 * s))[..., None]
    background = background * lighting(rng, size, 0.2)[..., None]
    background_shadowed = background * (1.0 - 0.6 * _drop_shadow(cov, s, rng))[..., None]

    inside = np.clip(-sd / half_w, 0, 1)
    dome = np.sqrt(1.0 - (1.0 - inside) ** 2)
    hx, hy = -0.35 * half_len, -0.35 * half_w
    highlight = np.exp(-((u - hx) ** 2 / (0.5 * half_len) ** 2 + (v - hy) ** 2 / (0.5 * half_w) ** 2))
    shade = 0.72 + 0.22 * dome + 0.08 * highlight + 0.02 * noise(rng, size, size, cell=2 * s)
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
