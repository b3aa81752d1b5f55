"""Training tensors: each image resized to the model's square resolution, its mask one-hot over
[background, types], everything scaled to [-1, 1]; and the random flips and crops the two models train on."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from engine.datasets.imageio import read_image, read_mask
from engine.datasets.segmentation import SegSample
from engine.errors import DatasetError

# A thin defect (a crack a few pixels wide) covers only part of each model pixel after downscaling: a pixel is
# defect when at least this share of it was, so thin defects survive 64 px instead of vanishing.
MASK_COVER = 0.25


def encode(image: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """uint8 RGB H x W x 3 and int labels H x W (0 background, i = class i - 1) to C x H x W float32 in [-1, 1]."""
    rgb = image.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    onehot = np.eye(n_classes + 1, dtype=np.float32)[labels].transpose(2, 0, 1) * 2.0 - 1.0
    return np.concatenate([rgb, onehot])


def load_sample(s: SegSample, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(image resolution x resolution x 3 uint8, labels resolution x resolution int)."""
    img = read_image(s.image_path)
    h, w = img.shape[:2]
    small = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
    labels = np.zeros((resolution, resolution), np.int64)
    if s.label and s.mask_path is not None:
        mask = read_mask(s.mask_path, (h, w)).astype(np.float32)
        cover = cv2.resize(mask, (resolution, resolution), interpolation=cv2.INTER_AREA)
        labels[cover >= MASK_COVER] = s.label
    return small, labels


def build_tensor(samples: Sequence[SegSample], resolution: int, n_classes: int) -> torch.Tensor:
    """N x C x R x R float32 of every sample."""
    if not samples:
        raise DatasetError("no training images for the generator")
    out = [encode(*load_sample(s, resolution), n_classes) for s in samples]
    return torch.from_numpy(np.stack(out))


def augmented_batch(data: torch.Tensor, batch_size: int, crop: int | None, gen: torch.Generator) -> torch.Tensor:
    """A random batch with random horizontal and vertical flips (defects on surfaces have no preferred side),
    cropped to `crop` x `crop` at a random place when given (model B: local texture only)."""
    idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
    x = data[idx].clone()
    flip_h = torch.rand(batch_size, generator=gen) < 0.5
    flip_v = torch.rand(batch_size, generator=gen) < 0.5
    x[flip_h] = x[flip_h].flip(-1)
    x[flip_v] = x[flip_v].flip(-2)
    if crop is None or crop >= x.shape[-1]:
        return x
    size = x.shape[-1]
    ys = torch.randint(0, size - crop + 1, (batch_size,), generator=gen).tolist()
    xs = torch.randint(0, size - crop + 1, (batch_size,), generator=gen).tolist()
    return torch.stack([x[i, :, y:y + crop, c:c + crop] for i, (y, c) in enumerate(zip(ys, xs, strict=True))])
