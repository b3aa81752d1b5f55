"""Training: a cache of frozen-trunk features of augmented views, then a fixed number of decoder steps.

A fixed number of steps, not epochs: the few-shot protocols compare k real images with k real + N synthetic ones at
the same training cost, so fewer images are oversampled (each step draws one cached view per image, cycling through
the images in a seeded order) rather than trained for less. AdamW with a short warm-up and a cosine decay; the trunk
stays frozen (trainers.defectseg.model says why). Same seed, same draw and same data: the same model.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.datasets.segmentation import SegmentationSplit, SegSample
from engine.errors import DatasetError
from trainers.common.device import resolve_device
from trainers.common.onnx_export import parity_check_images
from trainers.defectseg.data import build_cache, views_per_image
from trainers.defectseg.export import publish
from trainers.defectseg.losses import segmentation_loss
from trainers.defectseg.model import SegArch, SegmentationNet

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class FitConfig:
    # What the job's parameters set: their defaults, ranges and rules live in TrainSegmentationParams alone
    # (engine/jobs/kinds_defect_segmentation.py), so these have none.
    steps: int
    image_size: int
    backbone: str
    batch_size: int
    lr: float
    device: str
    seed: int
    time_budget_s: float | None
    # The schedule's own constants (not job parameters).
    views: int = 8  # augmented views cached per training image (the first is the image itself)
    dice_weight: float = 1.0
    max_cache_bytes: float = 2e9  # fewer views when the cache would outgrow this
    warmup_steps: int = 20
    log_every: int = 25  # steps per loss-history entry


def view_batches(image_of: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of cached-view indices: every image once per pass, in a new seeded order each pass, each
    through a random one of its views."""
    by_image: dict[int, np.ndarray] = {}
    for i in np.unique(image_of).tolist():
        by_image[i] = np.flatnonzero(image_of == i)
    images = np.array(sorted(by_image))
    pending: list[int] = []
    while True:
        for i in rng.permutation(images).tolist():
            pending.append(int(rng.choice(by_image[i])))
            if len(pending) == batch_size:
                yield np.array(pending)
                pending = []




def train_segmentation(split: SegmentationSplit, out: str | Path, cfg: FitConfig,
                       extra: Sequence[SegSample] = (), extra_summary: Sequence[dict] = (),
                       draw: dict[str, Any] | None = None, progress: Progress | None = None) -> dict:
    """Train on the split's training images plus `extra`, export, parity-check, evaluate on the held-out images
    and publish to `out`. Returns {"run_dir", "metadata"}."""
    progress = progress or (lambda _f, _m: None)
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train = [*split.train, *extra]
    if not any(s.label for s in train):
        raise DatasetError(f"{split.root}: no defective training images with masks")
    device = resolve_device(cfg.device)
    net = SegmentationNet(SegArch(cfg.backbone, len(split.classes), cfg.image_size)).to(device)
    views = views_per_image(len(train), net, cfg.views, cfg.max_cache_bytes)
    cache, skipped = build_cache(net, train, views, rng, device, lambda f, m: progress(0.2 * f, m))
    t_cache = time.monotonic() - t0

    params = list(net.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    step, stopped_early, t_train0 = 0, False, time.monotonic()
    net.train()
    batches = view_batches(cache.image_of, min(cfg.batch_size, len(cache.image_of)), rng)
    while step < cfg.steps:
        elapsed = time.monotonic() - t0
        if cfg.time_budget_s is not None and elapsed > cfg.time_budget_s:
            stopped_early = True
            break
        done = max(step / cfg.steps, elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0)
        warm = min(1.0, (step + 1) / cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        idx = torch.from_numpy(next(batches))
        logits = net.forward_cached(*(f[idx].to(device).float() for f in cache.feats))
        losses = segmentation_loss(logits, cache.target[idx].to(device), cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        step += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = step - (history[-1]["step"] if history else 0)
            history.append({"step": step, **{k: round(v / n, 5) for k, v in sums.items()}})
            sums = {}
            progress(0.2 + 0.65 * step / cfg.steps, f"step {step}/{cfg.steps}: loss {history[-1]['total']:.3f}")
    if sums:  # the steps since the last entry (a run stopped by its time budget)
        n = step - (history[-1]["step"] if history else 0)
        history.append({"step": step, **{k: round(v / n, 5) for k, v in sums.items()}})
    t_train = time.monotonic() - t_train0
    net.eval()
    progress(0.86, "exporting to ONNX, checking parity, evaluating on the held-out images")
    training = {
        "trained_on": [s.key for s in split.train],
        "n_train_images": cache.n_images, "n_dataset_images": len(split.train), "n_extra_images": len(extra),
        "n_held_out_images": len(split.held_out), "draws": split.draws, "draw": draw or {}, "extra": list(extra_summary),
        "views_per_image": views, "steps": step, "stopped_by_time_budget": stopped_early,
        "seconds_cache": round(t_cache, 1), "seconds_train": round(t_train, 1),
        "seconds_per_step": round(t_train / max(step, 1), 4),
        "seconds_total": round(time.monotonic() - t0, 1),  # cache and training; export and evaluation come after
        "device": str(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "config": asdict(cfg),
        "loss_history": history, "skipped_images": skipped, "dataset_issues": split.issues[:50],
    }
    meta = publish(net.cpu(), out, split.classes, parity_check_images(train), split.held_out, training, split.root,
                   lambda f, m: progress(0.9 + 0.1 * f, m))
    progress(1.0, f"defect segmentation model written to {out}")
    return {"run_dir": str(out), "metadata": meta}
