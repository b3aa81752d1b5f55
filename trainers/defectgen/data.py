"""Training tensors: square windows around each real defect (the defect at a random share of the window, off
centre by a random amount), resized to the model's resolution, with the defect's one-hot mask over
[background, types] and its type as the class label; all scaled to [-1, 1]. And the random flips, transposes and
crops the two models train on.

Why windows and not whole images: a defect is a few percent of a part (a magnetic tile crack is 3 px wide on a
400 px tile); resized whole to 64 px it is gone before the generator sees it. The generator paints defects at a
scale where they are visible, and sampling pastes them onto real good parts at the window sizes the real defects
had (trainers.defectgen.job), so every synthetic image is a real part with a generated defect and its exact mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.datasets.imageio import read_image, read_mask
from engine.datasets.segmentation import SegSample
from engine.errors import DatasetError
from trainers.defectgen.config import GeneratorConfig

# A thin defect (a crack a few pixels wide) covers only part of each model pixel after downscaling: a pixel is
# defect when at least this share of it was, so thin defects survive the resize instead of vanishing.
MASK_COVER = 0.25
MIN_COMPONENT_PIXELS = 4  # smaller mask specks are annotation noise, not a defect to learn
MAX_COMPONENTS_PER_IMAGE = 6  # the largest ones; more would let one speckled image dominate the bank
MIN_WINDOW = 16  # px of the source image


@dataclass
class WindowBank:
    """Every training window: data N x C x R x R in [-1, 1], labels N (type index 0 .. K-1), and the windows'
    sides in source pixels per type name (the scale sampling pastes generated defects at)."""

    data: torch.Tensor
    labels: torch.Tensor
    sides: dict[str, list[int]]

    @property
    def grey(self) -> bool:
        """Whether every training window is grey (R = G = B): its generated windows must be too."""
        rgb = self.data[:, :3]
        return bool((rgb.amax(1) - rgb.amin(1)).abs().max() < 1e-6)


def encode(image: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 RGB H x W x 3 and int labels H x W (0 background, i = class i - 1) to C x H x W float32 in [-1, 1]."""
    rgb = image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    onehot = np.eye(n_classes + 1, dtype=np.float32)[labels].transpose(2, 0, 1) * 2.0 - 1.0
    return np.concatenate([rgb, onehot])


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) boxes of the mask's connected components, largest first."""
    n, _lab, stats, _c = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [(int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4])) for s in stats[1:n]
             if s[4] >= MIN_COMPONENT_PIXELS]
    boxes.sort(key=lambda b: -b[4])
    return [b[:4] for b in boxes[:MAX_COMPONENTS_PER_IMAGE]]


def _window(box: tuple[int, int, int, int], shape: tuple[int, int], cfg: GeneratorConfig,
            rng: np.random.Generator) -> tuple[int, int, int]:
    """(y0, x0, side) of one random square window around `box`, inside the image."""
    x, y, w, h = box
    H, W = shape
    side = round(max(w, h) * rng.uniform(*cfg.window_context))
    side = min(max(side, MIN_WINDOW), H, W)
    cy = y + h / 2 + rng.uniform(-cfg.window_jitter, cfg.window_jitter) * side
    cx = x + w / 2 + rng.uniform(-cfg.window_jitter, cfg.window_jitter) * side
    y0 = int(np.clip(round(cy - side / 2), 0, H - side))
    x0 = int(np.clip(round(cx - side / 2), 0, W - side))
    return y0, x0, side


def defect_windows(samples: Sequence[SegSample], cfg: GeneratorConfig, classes: Sequence[str],
                   seed: int = 0) -> WindowBank:
    """`cfg.windows_per_defect` random windows around every defect component of the defective samples."""
    rng = np.random.default_rng(seed)
    r, k = cfg.resolution, len(classes)
    data, labels = [], []
    sides: dict[str, list[int]] = {name: [] for name in classes}
    for s in samples:
        if not s.label or s.mask_path is None:
            continue
        image = read_image(s.image_path)
        mask = read_mask(s.mask_path, image.shape[:2])
        for box in _components(mask):
            for _ in range(cfg.windows_per_defect):
                y0, x0, side = _window(box, mask.shape, cfg, rng)
                crop = cv2.resize(image[y0:y0 + side, x0:x0 + side], (r, r), interpolation=cv2.INTER_AREA)
                cover = cv2.resize(mask[y0:y0 + side, x0:x0 + side].astype(np.float32), (r, r),
                                   interpolation=cv2.INTER_AREA)
                lab = np.where(cover >= MASK_COVER, s.label, 0)
                data.append(encode(crop, lab, k))
                labels.append(s.label - 1)
                sides[classes[s.label - 1]].append(side)
    if not data:
        raise DatasetError("no defect with a mask among the generator's training images")
    missing = [name for name, v in sides.items() if not v]
    if missing:
        raise DatasetError(f"defect types without any masked defect to learn from: {', '.join(missing)}")
    return WindowBank(torch.from_numpy(np.stack(data)), torch.tensor(labels, dtype=torch.long), sides)


def augmented_batch(bank: WindowBank, batch_size: int, crop: int | None, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a random batch, its labels): random horizontal and vertical flips and transposes (defects on surfaces
    have no preferred side or direction), cropped to `crop` x `crop` at a random place when given (model B:
    local texture only)."""
    idx = torch.randint(0, bank.data.shape[0], (batch_size,), generator=gen)
    x = bank.data[idx].clone()
    for op in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)):
        pick = torch.rand(batch_size, generator=gen) < 0.5
        x[pick] = op(x[pick])
    labels = bank.labels[idx]
    if crop is None or crop >= x.shape[-1]:
        return x, labels
    size = x.shape[-1]
    ys = torch.randint(0, size - crop + 1, (batch_size,), generator=gen).tolist()
    xs = torch.randint(0, size - crop + 1, (batch_size,), generator=gen).tolist()
    return torch.stack([x[i, :, y:y + crop, c:c + crop] for i, (y, c) in enumerate(zip(ys, xs, strict=True))]), labels
