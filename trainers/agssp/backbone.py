"""Anomaly-guided backbone pretraining (AGSSP's AGBP) of the detector's EfficientNet-Lite trunk.

On an unlabelled pool scored by the pseudo_boxes job (its maps, engine/pseudo_pool_format.py), the trunk learns so
that each late stage's activation energy (sum over channels of squared features) has the shape of the image's
anomaly map: loss 2 - 2 cos(energy, map) per stage, as the seed does on late stages. Alone that term lets the trunk
forget what ImageNet taught it (any features with the right energy satisfy it), so a self-supervised term keeps
each stage's features close in direction to the frozen ImageNet trunk's on the same view (feature
self-distillation).

The late stages are the detector's top stages (stride 16 and 32), the part its own training fine-tunes; the stem
below them stays ImageNet's. That is also what makes this affordable on a CPU: as in detector training, each
augmented view goes through the frozen stem once (ONNX Runtime), is cached, and the epochs run only the top stages
(a full-trunk backward pass costs ~10x more per step).

The output folder is a detector initialisation: detector_state.pt with the trunk only (classes []), which
`train_detector --init FOLDER` loads (its FPN and head start afresh), plus backbone_pretrain.json.
"""

from __future__ import annotations

import copy
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.datasets.imageio import read_image
from engine.errors import DatasetError, DefectScopeError
from engine.fsutil import atomic_write_text
from trainers.common.device import resolve_device
from trainers.common.io import atomic_write
from trainers.detector.export import STATE_FILE
from trainers.detector.fit import stem_runner
from trainers.detector.frame import content_shape, to_frame
from trainers.detector.model import Detector, DetectorArch

PRETRAIN_FILE = "backbone_pretrain.json"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PretrainConfig:
    # Set from PretrainBackboneParams (engine/jobs/kinds_agssp_pretrain.py), which owns defaults and ranges.
    backbone: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    distill_weight: float
    seed: int
    device: str
    time_budget_s: float | None
    views: int = 2  # augmented views cached per pool image (the first is the image itself)


def _frame_map(amap: np.ndarray, shape: tuple[int, int], size: int) -> torch.Tensor:
    """A pool map (square, the whole image) placed where the image's content lies in the padded model frame."""
    ch, cw = content_shape(shape[0], shape[1], size)
    m = F.interpolate(torch.from_numpy(amap)[None, None].float(), size=(ch, cw), mode="bilinear",
                      align_corners=False)
    out = torch.zeros((1, 1, size, size))
    out[..., :ch, :cw] = m
    return out


def _view(image: np.ndarray, amap: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flips and 90-degree turns, the same on the image and its map (the map is square: squashing commutes)."""
    k = int(rng.integers(4))
    image, amap = np.rot90(image, k), np.rot90(amap, k)
    if rng.random() < 0.5:
        image, amap = image[:, ::-1], amap[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(amap)


def energy_loss(feats: tuple[torch.Tensor, ...], maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over stages and images of 2 - 2 cos(sum_c f^2, the map at that stage's resolution)."""
    losses = []
    for f, m in zip(feats, maps, strict=True):
        energy = f.pow(2).sum(1).flatten(1)
        losses.append(2 - 2 * F.cosine_similarity(energy, m.flatten(1) + 1e-6, dim=1))
    return torch.stack(losses).mean()


def distill_loss(feats: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean over stages and locations of 1 - cos(student, ImageNet teacher) along channels."""
    return torch.stack([(1 - F.cosine_similarity(f, t, dim=1)).mean() for f, t in zip(feats, teacher,
                                                                                       strict=True)]).mean()


@torch.no_grad()
def _cache(det: Detector, images: list[str], maps: np.ndarray, cfg: PretrainConfig, device: torch.device,
           rng: np.random.Generator, progress: Progress) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`views` augmented views of every readable pool image through the frozen stem, with their framed maps."""
    stem = stem_runner(det, device)
    c3s, h16s, fmaps, batch, unreadable = [], [], [], [], {}

    def flush() -> None:
        if batch:
            c3, h16 = stem(torch.cat(batch))
            c3s.append(c3.half().cpu())
            h16s.append(h16.half().cpu())
            batch.clear()

    for i, path in enumerate(images):
        try:
            image = read_image(path)
        except DefectScopeError as exc:
            unreadable[path] = str(exc)
            continue
        for v in range(cfg.views):
            img, amap = (image, maps[i]) if v == 0 else _view(image, maps[i], rng)
            batch.append(to_frame(img, cfg.image_size))
            fmaps.append(_frame_map(amap, img.shape[:2], cfg.image_size))
            if len(batch) >= 32:
                flush()
        progress(0.4 * (i + 1) / len(images), f"caching stem features: {i + 1}/{len(images)} images")
    flush()
    if not c3s:
        raise DatasetError("no pool image could be read: " + "; ".join(list(unreadable.values())[:3]))
    # the maps at the two top stages' resolutions (stride 16 and 32) are all the loss needs
    m = torch.cat(fmaps)
    s = cfg.image_size
    return {"c3": torch.cat(c3s), "h16": torch.cat(h16s), "m16": F.adaptive_avg_pool2d(m, s // 16).half(),
            "m32": F.adaptive_avg_pool2d(m, s // 32).half()}, unreadable


def pretrain_backbone(images: list[str], maps: np.ndarray, out: str | Path, cfg: PretrainConfig,
                      progress: Progress | None = None, pool: str = "") -> dict:
    """Train the trunk's top stages on `images` with their anomaly `maps` ([N, h, w] in [0, 1]); write the
    init folder."""
    progress = progress or (lambda _f, _m: None)
    if len(images) != len(maps):
        raise DatasetError(f"{pool}: {len(images)} images but {len(maps)} maps")
    if not images:
        raise DatasetError(f"{pool}: the pool holds no images")
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    det = Detector(DetectorArch(cfg.backbone, 1, cfg.image_size)).to(device)
    teacher = copy.deepcopy(det.trunk).eval()
    cache, unreadable = _cache(det, images, maps, cfg, device, rng, progress)
    t_cache = time.monotonic() - t0
    params = det.trunk.top_parameters()
    for p in params:
        p.requires_grad_(True)
    det.trunk.train()  # BatchNorm stays in eval (Trunk.train): the ImageNet statistics are kept
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    n_views = len(cache["c3"])
    steps_per_epoch = math.ceil(n_views / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    step, stopped_early = 0, False
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(n_views))
        sums = {"energy": 0.0, "distill": 0.0, "total": 0.0}
        n = 0
        for j in range(0, n_views, cfg.batch_size):
            if cfg.time_budget_s is not None and time.monotonic() - t0 > cfg.time_budget_s:
                stopped_early = True
                break
            idx = order[j:j + cfg.batch_size]
            c3, h16 = cache["c3"][idx].to(device).float(), cache["h16"][idx].to(device).float()
            for g in opt.param_groups:  # cosine decay after a short warm-up
                g["lr"] = cfg.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
            _, c4, c5 = det.trunk.top(c3, h16)
            with torch.no_grad():
                _, t4, t5 = teacher.top(c3, h16)
            maps_at = (cache["m16"][idx].to(device).float(), cache["m32"][idx].to(device).float())
            le, ld = energy_loss((c4, c5), maps_at), distill_loss((c4, c5), (t4, t5))
            loss = le + cfg.distill_weight * ld
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            step += 1
            n += 1
            for k, v in (("energy", le), ("distill", ld), ("total", loss)):
                sums[k] += float(v.detach())
            progress(0.4 + 0.55 * min(1.0, step / max(total, 1)),
                     f"epoch {epoch + 1}/{cfg.epochs}, step {step}/{total}: energy {float(le.detach()):.3f}, "
                     f"distill {float(ld.detach()):.3f}")
        if n:
            history.append({"epoch": epoch + 1, **{k: round(v / n, 5) for k, v in sums.items()}})
        if stopped_early:
            break
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det.eval().cpu()
    buffer = io.BytesIO()
    trunk_state = {k: v.detach().cpu() for k, v in det.state_dict().items() if k.startswith("trunk.")}
    torch.save({"arch": det.arch.to_dict(), "classes": [], "state": trunk_state}, buffer)
    atomic_write(out / STATE_FILE, buffer.getvalue())
    meta = {"kind": "backbone_pretrain", "method": "AGSSP backbone pretraining of the top trunk stages (energy ~ "
            "anomaly map, 2 - 2 cos; feature self-distillation to the ImageNet trunk)", "pool": pool,
            "n_images": len(images) - len(unreadable), "views_per_image": cfg.views,
            "unreadable": dict(list(unreadable.items())[:50]), "steps": step, "epochs_run": len(history),
            "stopped_by_time_budget": stopped_early, "seconds_cache": round(t_cache, 1),
            "seconds": round(time.monotonic() - t0, 1), "device": str(device),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "config": asdict(cfg),
            "loss_history": history}
    atomic_write_text(out / PRETRAIN_FILE, json.dumps(meta, indent=2))
    progress(1.0, f"pretrained trunk written to {out} (use it as --init of train detector)")
    return {"run_dir": str(out), "metadata": meta}
