"""Rendering one demo image: a registered category's part, sensor noise, and (for a defect image) one registered
defect painted on it, each from its own random stream keyed by (seed, category, split, defect, index), so an
image is byte-identical on rerun and independent of the counts asked for or the order of rendering.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# Imported for their registrations: every category and defect exists once this module is loaded.
from engine.datasets import demo_defects, demo_surfaces  # noqa: F401
from engine.datasets.demo_parts import CATEGORIES, DEFECTS, Image
from engine.errors import DatasetError

# Defect masks outside these area fractions are re-drawn: tiny ones are invisible, huge ones trivial.
MIN_DEFECT_AREA = 0.001
MAX_DEFECT_AREA = 0.06


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
