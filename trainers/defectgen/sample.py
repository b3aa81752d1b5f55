"""Deterministic sampling: DDIM over the shared plan, model A where the plan says large, model B where small.

Same generator, seed and number of steps: the same images and masks (the only randomness is the starting noise,
drawn from a seeded CPU generator so it does not depend on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trainers.defectgen.config import IMAGE_CHANNELS, GeneratorConfig
from trainers.defectgen.diffusion import alphas_cumprod, ddim_step
from trainers.defectgen.model import predict_x0
from trainers.defectgen.schedule import LARGE, sampling_plan


@dataclass
class Samples:
    images: np.ndarray  # N x H x W x 3 uint8 RGB
    masks: np.ndarray  # N x H x W int: 0 background, i = class i - 1 (the SegSample label)


def decode(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[-1, 1] tensors N x C x H x W to uint8 RGB images and argmax label masks."""
    rgb = ((x[:, :IMAGE_CHANNELS].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    labels = x[:, IMAGE_CHANNELS:].argmax(dim=1)
    return rgb.permute(0, 2, 3, 1).cpu().numpy(), labels.cpu().numpy().astype(np.int64)


@torch.no_grad()
def sample_tensors(large: torch.nn.Module, small: torch.nn.Module, cfg: GeneratorConfig, n_classes: int,
                   labels: Sequence[int], seed: int, steps: int | None = None,
                   device: torch.device | None = None) -> torch.Tensor:
    """N x C x H x W clean samples in [-1, 1], one per defect type index in `labels`."""
    device = device or torch.device("cpu")
    n = len(labels)
    if any(not 0 <= k < n_classes for k in labels):
        raise ValueError(f"labels {sorted(set(labels))}: defect type indices must be inside 0 .. {n_classes - 1}")
    alpha_bar = alphas_cumprod(cfg.num_timesteps)
    plan = sampling_plan(cfg.num_timesteps, cfg.switch_step, steps or cfg.sampling_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.channels(n_classes), cfg.resolution, cfg.resolution, generator=gen).to(device)
    y = torch.tensor(list(labels), dtype=torch.long, device=device)
    for step in plan:
        model = large if step.model == LARGE else small
        t = torch.full((n,), step.t, dtype=torch.long, device=device)
        # Clipping x0 keeps the estimate inside the data range; the mask channels are decoded by argmax anyway.
        x0 = predict_x0(model, x, t, y).clamp(-1, 1)
        x = ddim_step(x, x0, step.t, step.t_prev, alpha_bar)
    return x


def sample(large: torch.nn.Module, small: torch.nn.Module, cfg: GeneratorConfig, n_classes: int,
           labels: Sequence[int], seed: int, steps: int | None = None, batch_size: int = 16,
           device: torch.device | None = None, progress: Callable[[float, str], None] | None = None) -> Samples:
    """One defect window with its label mask per type index in `labels`, at the model resolution. Each batch's
    noise is seeded from `seed` and the batch index: same seed, labels and batch_size, same samples."""
    images, masks = [], []
    n = len(labels)
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        x = sample_tensors(large, small, cfg, n_classes, labels[start:start + m], seed * 100_003 + b, steps,
                           device)
        img, lab = decode(x)
        images.append(img)
        masks.append(lab)
        if progress:
            progress((start + m) / n, f"sampled {start + m}/{n}")
    return Samples(np.concatenate(images), np.concatenate(masks))
