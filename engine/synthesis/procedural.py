"""Procedural synthetic defects on good images, each with its exact mask: the fast default of defect synthesis.

Two generators share this module:
- `synthetic_defect` / `synthetic_samples`: generic, untyped defects for the promptable segmenter (below);
- `pasted_defect` / `typed_samples`: a real defect of a known type cut out along its mask and pasted onto a good
  part (flipped, turned, re-placed, edge feathered), so the sample carries that type's label; the supervised defect
  segmentation model and the synthesis job use it.

Generic defects, for the segmenter when real masks are few:

An inspection dataset has hundreds of good images and a few dozen defect masks; a category with nine masked
images teaches the decoder little about where a defect ends. Following DRAEM's anomaly synthesis (a random
region of a good image replaced by foreign texture, the region being the exact label), each synthetic sample
pastes a random shape (blob, crack-like stroke, or spot) filled with a texture crop of another good image, a
brightness change or a blur, with a soft edge. The decoder learns the generic skill a box or click needs
(segment what differs from its surroundings) from unlimited exact labels, and the real masks teach the
defect types themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.datasets import GOOD, load_dataset
from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError


def good_images(roots: Sequence[tuple[Path, tuple[str, ...] | None]]) -> list[tuple[Path, str]]:
    """(image path, group) of every good image of the sources; group = '<root>|<category>'."""
    out = []
    for root, categories in roots:
        dataset = load_dataset(Path(root))
        wanted = set(categories) if categories else None
        for s in dataset.samples:
            if s.label == GOOD and (wanted is None or s.category in wanted):
                out.append((s.image_path, f"{root}|{s.category or ''}"))
    return sorted(out, key=lambda t: str(t[0]))


def _blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Irregular blob: smooth noise thresholded inside an ellipse (Perlin-like, cheap)."""
    k = int(rng.integers(3, 7))
    noise = cv2.resize(rng.random((k, k)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ell = ((xx - (w - 1) / 2) / max(w / 2, 1)) ** 2 + ((yy - (h - 1) / 2) / max(h / 2, 1)) ** 2
    m = (noise - 0.6 * ell) > rng.uniform(0.0, 0.3)
    return m & (ell <= 1.0)


def _stroke(h: int, w: int, long_side: int, rng: np.random.Generator) -> np.ndarray:
    """Crack- or scratch-like polyline, 1 px to ~1.5% of the image's long side thick."""
    m = np.zeros((h, w), np.uint8)
    n = int(rng.integers(2, 7))
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    ang = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    step = max(h, w) / n
    for _ in range(n):
        ang += rng.normal(0, 0.6)
        x = float(np.clip(x + step * np.cos(ang), 0, w - 1))
        y = float(np.clip(y + step * np.sin(ang), 0, h - 1))
        pts.append((x, y))
    thick = int(rng.integers(1, max(2, round(0.015 * long_side)) + 1))
    cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness=thick, lineType=cv2.LINE_8)
    return m > 0


def _spot(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    size = (max(1.0, w * rng.uniform(0.5, 1.0)), max(1.0, h * rng.uniform(0.5, 1.0)))
    cv2.ellipse(m, (((w - 1) / 2, (h - 1) / 2), size, float(rng.uniform(0, 180))), 1, -1)
    return m > 0


def _place(image: np.ndarray, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of the defect region; on an object image (a part on a plain background, like a
    hazelnut), usually on the part, where real defects are. Foreground = far in colour from the border's median."""
    H, W = image.shape[:2]
    if rng.random() < 0.7:
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
        dist = np.linalg.norm(image.astype(np.float32) - np.median(border, 0), axis=-1)
        fg = dist > 40
        if 0.05 < fg.mean() < 0.8:
            ys, xs = np.nonzero(fg)
            k = int(rng.integers(len(xs)))
            return (int(np.clip(ys[k] - h // 2, 0, H - h)), int(np.clip(xs[k] - w // 2, 0, W - w)))
    return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))


def synthetic_defect(image: np.ndarray, texture: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(image with one synthetic defect, its bool mask); `texture` is another image to take foreign texture from."""
    H, W = image.shape[:2]
    L = max(H, W)
    kind = rng.choice(3, p=[0.45, 0.35, 0.2])
    size_frac = rng.uniform(0.03, 0.3) if kind != 2 else rng.uniform(0.015, 0.08)
    h = max(3, min(H, int(size_frac * L * rng.uniform(0.5, 1.5))))
    w = max(3, min(W, int(size_frac * L * rng.uniform(0.5, 1.5))))
    local = _blob(h, w, rng) if kind == 0 else _stroke(h, w, L, rng) if kind == 1 else _spot(h, w, rng)
    if local.sum() < 4:
        local = _spot(h, w, rng)
    y0, x0 = _place(image, h, w, rng)
    mask = np.zeros((H, W), bool)
    mask[y0 : y0 + h, x0 : x0 + w] = local

    img = image.astype(np.float32)
    fill_kind = rng.choice(3, p=[0.5, 0.35, 0.15])
    if fill_kind == 0:  # foreign texture, random crop of another image, colour-jittered
        tex = texture.astype(np.float32)
        if tex.shape[0] < H or tex.shape[1] < W:
            tex = cv2.resize(tex, (max(W, tex.shape[1]), max(H, tex.shape[0])))
        ty, tx = int(rng.integers(0, tex.shape[0] - H + 1)), int(rng.integers(0, tex.shape[1] - W + 1))
        fill = np.rot90(tex[ty : ty + H, tx : tx + W], int(rng.integers(0, 2)) * 2)
        fill = fill * rng.uniform(0.5, 1.5) + rng.uniform(-40, 40)
        beta = rng.uniform(0.5, 1.0)
        fill = beta * fill + (1 - beta) * img
    elif fill_kind == 1:  # darker or brighter (stains, burns, dents under oblique light)
        gain = rng.uniform(0.3, 0.75) if rng.random() < 0.6 else rng.uniform(1.3, 2.0)
        fill = img * gain + rng.uniform(-20, 20)
    else:  # blurred or smeared surface
        k = 2 * int(rng.integers(3, 9)) + 1
        fill = cv2.GaussianBlur(img, (k, k), 0) * rng.uniform(0.8, 1.2)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[..., None]
    out = np.clip(alpha * fill + (1 - alpha) * img, 0, 255).astype(np.uint8)
    return out, mask


def synthetic_samples(goods: list[tuple[Path, str]], n: int, seed: int
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
    """n (image, mask, group) synthetic samples, spread evenly over the groups of the good images; made lazily,
    so only one full-size image is in memory at a time.

    Texture comes from a good image of another group when there is one: foreign texture is what a defect is.
    """
    if n <= 0:
        return
    if not goods:
        raise DefectScopeError("synthetic defects need good images, and the datasets have none")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Path]] = {}
    for p, g in goods:
        groups.setdefault(g, []).append(p)
    names = sorted(groups)
    for i in range(n):
        g = names[i % len(names)]
        path = groups[g][int(rng.integers(len(groups[g])))]
        others = [o for o in names if o != g] or names
        tg = others[int(rng.integers(len(others)))]
        tex_path = groups[tg][int(rng.integers(len(groups[tg])))]
        image = read_image(path)
        texture = read_image(tex_path)  # both H x W x 3 RGB (read_image converts grayscale)
        img, mask = synthetic_defect(image, texture, rng)
        yield img, mask, f"synthetic|{g}"


# ------------------------------------------------------------------------------------------- typed cut-paste
MIN_DONOR_PIXELS = 4  # a donor mask smaller than this carries no defect worth pasting


@dataclass(frozen=True)
class Donor:
    """A real defect to paste: its image, its bool mask and its defect type."""

    image: np.ndarray
    mask: np.ndarray
    defect_type: str


def _donor_patch(donor: Donor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The donor's defect cut to its mask's bounding box (with a margin for the feathered edge), randomly flipped
    and turned by quarter turns: (patch H x W x 3 float32, mask H x W bool)."""
    ys, xs = np.nonzero(donor.mask)
    margin = 2
    y0, y1 = max(0, ys.min() - margin), min(donor.mask.shape[0], ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(donor.mask.shape[1], xs.max() + 1 + margin)
    patch = donor.image[y0:y1, x0:x1].astype(np.float32)
    mask = donor.mask[y0:y1, x0:x1]
    if rng.random() < 0.5:
        patch, mask = patch[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        patch, mask = patch[::-1], mask[::-1]
    turns = int(rng.integers(4))
    return np.ascontiguousarray(np.rot90(patch, turns)), np.ascontiguousarray(np.rot90(mask, turns))


def pasted_defect(good: np.ndarray, donor: Donor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(good image with the donor's defect pasted, bool mask of exactly the pasted defect pixels).

    The patch is shrunk when it does not fit; its brightness is shifted by the difference of the two images'
    surroundings, so a defect from a darker tile does not arrive with a dark halo; the edge is feathered over
    one pixel outside the mask only, so every mask pixel shows the donor's defect."""
    if donor.mask.sum() < MIN_DONOR_PIXELS:
        raise DefectScopeError(f"defect type '{donor.defect_type}': a donor mask has fewer than "
                               f"{MIN_DONOR_PIXELS} pixels")
    patch, mask = _donor_patch(donor, rng)
    H, W = good.shape[:2]
    h, w = mask.shape
    if h > H or w > W:
        f = min(H / h, W / w)
        size = (max(1, int(w * f)), max(1, int(h * f)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        h, w = mask.shape
    y0, x0 = _place(good, h, w, rng)
    img = good.astype(np.float32)
    region = img[y0:y0 + h, x0:x0 + w]
    ring = ~mask
    if ring.any():
        patch = patch + (region[ring].mean(0) - patch[ring].mean(0))
    alpha = np.maximum(mask.astype(np.float32), cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0))[..., None]
    out = img.copy()
    out[y0:y0 + h, x0:x0 + w] = alpha * patch + (1 - alpha) * region
    full = np.zeros((H, W), bool)
    full[y0:y0 + h, x0:x0 + w] = mask
    return np.clip(out, 0, 255).astype(np.uint8), full


def typed_samples(goods: Sequence[Path], donors: dict[str, Sequence[tuple[Path, Path]]], count_per_type: int,
                  seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, str, str]]:
    """count_per_type (image, mask, defect type, donor image name) per type: each a real donor of that type
    ({type: [(image path, mask path)]}) pasted on a good image, drawn by `seed`; made lazily (one image in
    memory at a time)."""
    from engine.datasets.imageio import read_mask

    if not goods:
        raise DefectScopeError("pasting defects needs good images, and the dataset has none in its training split")
    rng = np.random.default_rng(seed)
    for defect_type in sorted(donors):
        pairs = list(donors[defect_type])
        if not pairs:
            raise DefectScopeError(f"defect type '{defect_type}': no real defect with a mask to paste")
        for _ in range(count_per_type):
            image_path, mask_path = pairs[int(rng.integers(len(pairs)))]
            good = read_image(goods[int(rng.integers(len(goods)))])
            donor_image = read_image(image_path)
            mask = read_mask(mask_path, donor_image.shape[:2])
            image, pasted = pasted_defect(good, Donor(donor_image, mask, defect_type), rng)
            yield image, pasted, defect_type, image_path.name
