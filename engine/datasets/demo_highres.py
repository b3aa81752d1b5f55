"""Generated parts at their real shape and resolution (issue 19), in the MVTec AD layout with masks:

- `shaft`: an elongated turned part (default 500 x 1250 px) with machining streaks along it and a cylinder's
  shading across it; defects are hairline cracks 1-2 px wide and 25-70 px long, which a 256 x 256 stretch of the
  whole image thins below one pixel.
- `panel`: a large flat panel (default 4000 x 6000 px, 24 megapixels) with a fine grain and slow shading;
  defects are spots and short scratches about `defect_px` (15) px across, a few hundredths of a percent of the
  image: downscaled whole to a model's input, they are gone.

Each defective image has 1-3 defects; the mask is exactly the painted pixels. Deterministic: the same seed and
sizes give the same files. numpy + OpenCV only (a test and benchmark fixture, and a demo of tiling in the GUI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.demo_parts import noise, streaks
from engine.errors import DefectScopeError

Painter = Callable[[np.ndarray, np.random.Generator, "HighResSpec"], np.ndarray]


@dataclass(frozen=True)
class HighResSpec:
    name: str
    height: int
    width: int
    defect_type: str
    defect_px: int  # the typical defect size the part is meant to test


def _shaft(rng: np.random.Generator, spec: HighResSpec) -> np.ndarray:
    """Grey float image in [0, 1]: the shaft fills the middle 80% of the height, dark background above and below."""
    h, w = spec.height, spec.width
    y = (np.arange(h, dtype=np.float32) - h / 2) / (0.4 * h)  # -1 .. 1 across the shaft
    inside = np.abs(y) < 1.0
    profile = np.where(inside, 0.45 + 0.3 * np.sqrt(np.clip(1 - y ** 2, 0, 1)), 0.08).astype(np.float32)
    img = np.repeat(profile[:, None], w, axis=1)
    img += inside[:, None] * (0.035 * streaks(rng, h, w, along=w / 3, across=1.5)
                              + 0.01 * noise(rng, h, w, cell=w / 6))
    return img


def _panel(rng: np.random.Generator, spec: HighResSpec) -> np.ndarray:
    h, w = spec.height, spec.width
    # slow shading from a coarse grid (cheap at 24 MP), plus a fine grain
    shade = 0.04 * noise(rng, h // 50 + 2, w // 50 + 2, cell=8)
    img = 0.55 + cv2.resize(shade, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 0.02, (h, w)).astype(np.float32)
    return img


def _crack(img: np.ndarray, rng: np.random.Generator, spec: HighResSpec) -> np.ndarray:
    """A hairline crack on the shaft's body: a jagged 1-2 px polyline, darker than the metal."""
    h, w = img.shape
    length = int(rng.integers(25, 71))
    y0 = int(rng.integers(int(0.2 * h) + 10, int(0.8 * h) - 10))
    x0 = int(rng.integers(10, w - length - 10))
    angle = rng.uniform(-0.6, 0.6) + (np.pi / 2 if rng.random() < 0.5 else 0.0)  # along or across the shaft
    n = 8
    steps = np.linspace(0, length, n)
    pts = np.stack([x0 + steps * np.cos(angle), y0 + steps * np.sin(angle)], 1)
    pts += rng.normal(0, 1.2, pts.shape)
    pts[:, 1] = np.clip(pts[:, 1], 0.2 * h + 2, 0.8 * h - 2)
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thickness=1)
    if rng.random() < 0.5:  # 2 px wide (OpenCV's thickness 2 draws about 3)
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    img[mask > 0] -= rng.uniform(0.12, 0.2)
    return mask > 0


def _spot(img: np.ndarray, rng: np.random.Generator, spec: HighResSpec) -> np.ndarray:
    """A spot (a round pit or stain) or a short scratch about spec.defect_px across."""
    h, w = img.shape
    d = spec.defect_px
    cy, cx = int(rng.integers(2 * d, h - 2 * d)), int(rng.integers(2 * d, w - 2 * d))
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        cv2.ellipse(mask, (cx, cy), (max(2, int(d * rng.uniform(0.35, 0.6))), max(2, int(d * rng.uniform(0.35, 0.6)))),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        a = rng.uniform(0, np.pi)
        dx, dy = np.cos(a) * d / 2, np.sin(a) * d / 2
        cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, thickness=max(2, d // 6))
    img[mask > 0] += rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.25)
    return mask > 0


PARTS: dict[str, tuple[HighResSpec, Callable[[np.random.Generator, HighResSpec], np.ndarray], Painter]] = {
    "shaft": (HighResSpec("shaft", 500, 1250, "crack", 2), _shaft, _crack),
    "panel": (HighResSpec("panel", 4000, 6000, "spot", 15), _panel, _spot),
}


def render(part: str, defective: bool, seed: int, index: int, height: int | None = None, width: int | None = None,
           defect_px: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 grey image H x W, bool mask H x W) of one part."""
    try:
        spec, body, painter = PARTS[part]
    except KeyError:
        raise DefectScopeError(f"unknown high-resolution part '{part}' (one of {', '.join(PARTS)})") from None
    spec = HighResSpec(spec.name, height or spec.height, width or spec.width, spec.defect_type,
                       defect_px or spec.defect_px)
    if spec.height < 8 * spec.defect_px or spec.width < 8 * spec.defect_px or min(spec.height, spec.width) < 64:
        raise DefectScopeError(f"{part}: {spec.height} x {spec.width} px is too small for its defects")
    rng = np.random.default_rng([seed, index, int(defective), sum(map(ord, part))])
    img = body(rng, spec)
    mask = np.zeros(img.shape, bool)
    if defective:
        for _ in range(int(rng.integers(1, 4))):
            mask |= painter(img, rng, spec)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), mask


def generate_highres(root: str | Path, part: str, n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 10,
                     seed: int = 0, height: int | None = None, width: int | None = None,
                     defect_px: int | None = None) -> Path:
    """Write `root`/train/good, test/good, test/<defect type> and ground_truth/<defect type>/*_mask.png."""
    root = Path(root)
    defect_type = PARTS[part][0].defect_type if part in PARTS else ""
    jobs = ([("train", "good", i) for i in range(n_train)] + [("test", "good", i) for i in range(n_test_good)]
            + [("test", defect_type, i) for i in range(n_test_defect)])
    for split, kind, i in jobs:
        defective = kind != "good"
        img, mask = render(part, defective, seed, i + (0 if split == "train" else 100_000), height, width, defect_px)
        out = root / split / kind / f"{i:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out), img)
        if defective:
            gt = root / "ground_truth" / kind / f"{i:03d}_mask.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt), mask.astype(np.uint8) * 255)
    return root
