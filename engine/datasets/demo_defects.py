"""Defect painters of the demo dataset, registered by name (scratch, dent, stain, crack, missing, hole).

Each paints onto a `Part` and returns (alpha H x W in [0, 1], target image): the composite is
clean * (1 - alpha) + target * alpha, and the ground-truth mask is exactly alpha > 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from engine.datasets.demo_parts import (
    Image,
    Part,
    as_colour,
    bezier,
    draw_polylines,
    grid,
    noise,
    place,
    register_defect,
    smoothstep,
    threshold_alpha,
)

# --------------------------------------------------------------------------------------------------------------
# Defects. `s` is the image scale (image_size / 256): sizes below are given for a 256 px image.


@register_defect("scratch")
def _scratch(
    part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]
) -> tuple[np.ndarray, Image]:
    size = part.image.shape[0]
    length = rng.uniform(*p.get("length", (70.0, 140.0))) * s
    # On textures keep most of the curve inside the frame; objects pass a small margin of their own.
    centre = place(part, rng, margin=p["margin"] * s if "margin" in p else length * 0.35)
    base_angle = p.get("angle")
    angle = rng.uniform(0, np.pi) if base_angle is None else base_angle + rng.uniform(-0.6, 0.6)
    d = np.array([np.cos(angle), np.sin(angle)], np.float32)
    nrm = np.array([-d[1], d[0]], np.float32)
    p0, p2 = centre - d * length / 2, centre + d * length / 2
    p1 = centre + nrm * length * rng.uniform(-0.3, 0.3)
    thickness = 2 if rng.random() < p.get("thick_prob", 0.35) else 1
    alpha = draw_polylines(size, [(bezier(p0, p1, p2), max(1, round(thickness * s)))])
    # Real scratches fade out at both ends; the fade follows the projection on the chord.
    xs, ys = grid(size)
    along = ((xs - centre[0]) * d[0] + (ys - centre[1]) * d[1]) / (length / 2)
    alpha *= np.clip((1.0 - np.abs(along)) * 4.0, 0.45, 1.0) * p.get("opacity", 1.0)
    alpha = threshold_alpha(alpha * part.support)
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
    c = place(part, rng, margin=a + 2)
    t = rng.uniform(0, np.pi)
    xs, ys = grid(size)
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
    c = place(part, rng, margin=r * 0.8)
    xs, ys = grid(size)
    t = rng.uniform(0, np.pi)
    dx, dy = xs - c[0], ys - c[1]
    el = rng.uniform(0.6, 1.0)
    u = (dx * np.cos(t) + dy * np.sin(t)) / r
    v = (-dx * np.sin(t) + dy * np.cos(t)) / (r * el)
    # Irregular outline: a radial falloff perturbed by smooth noise, thresholded with a soft ramp.
    fld = 1.0 - np.sqrt(u * u + v * v) + 0.25 * noise(rng, size, size, cell=max(r / 1.5, 3.0), octaves=2)
    raw = smoothstep(0.0, rng.uniform(0.25, 0.5), fld)
    alpha = np.clip((raw - 0.25) / 0.75, 0.0, 1.0) * part.support
    # Drying stains collect pigment at the rim (coffee ring), which keeps them faint but visible.
    ring = p.get("ring", 0.0) * np.exp(-(((raw - 0.45) / 0.2) ** 2))
    opacity = rng.uniform(*p.get("opacity", (0.25, 0.4)))
    alpha = np.clip(alpha * opacity * (1.0 + ring), 0.0, 1.0).astype(np.float32)
    colour = as_colour(p.get("colour", (0.45, 0.35, 0.25)), channels)
    target = part.image * colour
    return alpha, target


@register_defect("crack")
def _crack(part: Part, rng: np.random.Generator, s: float, p: Mapping[str, Any]) -> tuple[np.ndarray, Image]:
    size = part.image.shape[0]
    length = rng.uniform(*p.get("length", (60.0, 110.0))) * s
    step = 2.5 * s
    start = place(part, rng, margin=p["margin"] * s if "margin" in p else length * 0.3)
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
    alpha = threshold_alpha(draw_polylines(size, curves) * part.support)
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
        c = place(part, rng, 0.0, where=edge) if edge.any() else place(part, rng, r)
    else:
        c = place(part, rng, margin=r)
    xs, ys = grid(size)
    dist = np.sqrt((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / r
    cell = max(p.get("ragged_cell", 4.0) * s, 1.5)
    ragged = dist + p.get("ragged", 0.25) * noise(rng, size, size, cell=cell)
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
