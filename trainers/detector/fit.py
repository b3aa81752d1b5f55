"""Training: a cache of frozen-trunk features of augmented views, then the detector trained on it.

Why a cache: on a 2-core CPU the trunk's early stages (full resolution down to stride 16) are most of the cost
of a training step and never change, so each training image is augmented `views` times once, run through those
stages once, and kept (float16). Training then runs only the top two trunk stages, the FPN and the head. The first
`frozen_share` of the schedule keeps the top stages frozen too (the new FPN and head settle without wrecking the
ImageNet features); the rest fine-tunes them at a lower learning rate.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.datasets.imageio import read_image
from engine.errors import DatasetError, DefectScopeError, ModelError
from trainers.common.device import resolve_device
from trainers.common.onnx_export import cpu_session, parity_check_images, trace_to_onnx
from trainers.detector.augment import augment
from trainers.detector.export import STATE_FILE, publish
from trainers.detector.frame import frame_scale, to_frame
from trainers.detector.losses import assign, detection_loss
from trainers.detector.model import Detector, DetectorArch, level_points

Progress = Callable[[float, str], None]
# Keys of the layers that turn a location into class scores: the closed-set class conv, or the open-set
# embedding, adaptor and calibration (class-agnostic: they carry over between open-set runs of other classes).
CLOSED_CLASS_LAYER = ("head.cls.",)
OPEN_CLASS_LAYERS = ("head.embed.", "head.adaptor.", "head.logit_")


@dataclass(frozen=True)
class Variant:
    """What differs between the closed-set detector and others trained by the same schedule: the network and
    how a trained one is exported and published."""

    build: Callable[[DetectorArch], Detector]
    publish: Callable[..., dict]


CLOSED_SET = Variant(build=Detector, publish=publish)


@dataclass(frozen=True)
class FitConfig:
    # What the job's parameters set: their defaults, ranges and rules live in TrainDetectorParams alone
    # (engine/jobs/kinds_detector.py), so these have none.
    epochs: int  # passes over the training images, each pass drawing one cached view per image
    image_size: int
    backbone: str
    batch_size: int
    lr: float
    device: str
    init: str | None  # a run folder to start from; None: the ImageNet trunk with a new head
    seed: int
    time_budget_s: float | None
    label_fraction: float = 1.0
    freeze_trunk: bool = False
    # The schedule's own constants (not job parameters).
    views: int = 8  # augmented views cached per training image (the first is the image itself)
    frozen_share: float = 0.3  # share of the schedule before the top trunk stages are fine-tuned
    top_lr_factor: float = 0.2
    max_cache_bytes: float = 3e9  # fewer views when the cache would outgrow this
    warmup_steps: int = 30


@dataclass
class _Cache:
    c3: torch.Tensor  # [V, C3, S/8, S/8] float16
    h16: torch.Tensor  # [V, C4, S/16, S/16] float16
    cls_t: torch.Tensor  # [V, L] int64
    reg_t: torch.Tensor  # [V, L, 4] float32
    image_of: np.ndarray  # [V] index of the source image


def _model_boxes(boxes: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    sx, sy = frame_scale(shape[0], shape[1], size)
    return (boxes / np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)


def _views_per_image(n_images: int, cfg: FitConfig, det: Detector) -> int:
    s = cfg.image_size
    c3, c4 = det.trunk.cached_channels
    per_view = 2 * (c3 * (s // 8) ** 2 + c4 * (s // 16) ** 2) + 20 * det.points.shape[0]
    return max(1, min(cfg.views, int(cfg.max_cache_bytes // max(1, per_view * n_images))))


class _Stem(torch.nn.Module):
    def __init__(self, det: Detector) -> None:
        super().__init__()
        self.trunk = det.trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.trunk.stem(x)


def stem_runner(det: Detector, device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The frozen stages as a function of a frame batch. On the CPU through ONNX Runtime: its depthwise
    convolutions run several times faster than torch's, and the cache is most of a CPU schedule's first minutes."""
    if device.type != "cpu":
        return lambda x: det.trunk.stem(x.to(device))
    size = det.arch.image_size
    graph = trace_to_onnx(_Stem(det).eval(), (torch.zeros(2, 3, size, size),), ["x"], ["c3", "h16"],
                   {"x": {0: "batch"}, "c3": {0: "batch"}, "h16": {0: "batch"}})
    session = cpu_session(graph.SerializeToString())
    return lambda x: tuple(torch.from_numpy(t) for t in session.run(None, {"x": x.numpy()}))


@torch.no_grad()
def build_cache(det: Detector, samples: list, views: int, rng: np.random.Generator, device: torch.device,
                progress: Progress) -> tuple[_Cache, list[str]]:
    """Augmented views of every readable training image through the frozen stages; unreadable files skipped."""
    size, points, levels = det.arch.image_size, *level_points(det.arch.image_size)
    c3s, h16s, cls_ts, reg_ts, image_of, skipped = [], [], [], [], [], []
    batch: list[torch.Tensor] = []
    stem = stem_runner(det, device)

    def flush() -> None:
        if batch:
            c3, h16 = stem(torch.cat(batch))
            c3s.append(c3.half().cpu())
            h16s.append(h16.half().cpu())
            batch.clear()

    for i, sample in enumerate(samples):
        try:
            image = read_image(sample.image_path)
        except DefectScopeError as exc:
            skipped.append(str(exc))
            continue
        for v in range(views):
            img, boxes, labels = image, sample.boxes.astype(np.float32), sample.labels.astype(np.int64)
            if v:
                img, boxes, labels = augment(img, boxes, labels, rng)
            batch.append(to_frame(img, size))
            mb = torch.from_numpy(_model_boxes(boxes, img.shape[:2], size))
            cls_t, reg_t = assign(points, levels, mb, torch.from_numpy(labels), det.arch.num_classes)
            cls_ts.append(cls_t)
            reg_ts.append(reg_t)
            image_of.append(i)
            if len(batch) >= 32:
                flush()
        progress((i + 1) / len(samples), f"caching features: {i + 1}/{len(samples)} images")
    flush()
    if not image_of:
        raise DatasetError("no training image could be read: " + "; ".join(skipped[:3]))
    return _Cache(torch.cat(c3s), torch.cat(h16s), torch.stack(cls_ts), torch.stack(reg_ts),
                  np.array(image_of)), skipped


def _load_init(det: Detector, init: str, classes: list[str]) -> dict[str, Any]:
    """Load a detector run's (or a pretrained backbone's) weights; refuses, naming the file, a state that would
    load only in part, so an initialisation never silently falls back to ImageNet."""
    path = Path(init) / STATE_FILE
    if not path.is_file():
        raise ModelError(f"--init {init}: no {STATE_FILE} there (give a detector run folder, or 'imagenet')")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        arch, state = saved.get("arch", {}), dict(saved["state"])
    except Exception as exc:  # unreadable, not a dict, or no "state": not a DefectScope detector state
        raise ModelError(f"{path}: not a detector state ({exc.__class__.__name__}: {exc})") from None
    for key in ("backbone", "width"):
        if arch.get(key) != getattr(det.arch, key):
            raise ModelError(f"--init {init}: its {key} is {arch.get(key)!r}, this training uses "
                             f"{getattr(det.arch, key)!r}")
    det_open = any(k.startswith(OPEN_CLASS_LAYERS) for k in det.state_dict())
    saved_open = any(k.startswith(OPEN_CLASS_LAYERS) for k in state)
    same_classes = list(saved.get("classes", [])) == list(classes) and det_open == saved_open
    # The closed-set class layer is per class: it starts afresh for other classes or an open-set detector; the
    # open-set layers are class-agnostic and carry over, except into a closed-set detector.
    dropped = CLOSED_CLASS_LAYER if not same_classes else ()
    if saved_open and not det_open:
        dropped += OPEN_CLASS_LAYERS
    state = {k: v for k, v in state.items() if not k.startswith(dropped)} if dropped else state
    try:
        result = det.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ (e.g. another FPN width)
        raise ModelError(f"{path}: its tensors do not fit this detector ({str(exc).splitlines()[0]})") from None
    # What may be missing: the class layer when it was dropped or the saved kind had none, and FPN and head of a
    # trunk-only state (a pretrained backbone); the trunk must load whole.
    allowed = list(dropped) if not det_open else ([] if saved_open else list(OPEN_CLASS_LAYERS))
    if not any(k.startswith("fpn.") for k in state):
        allowed += ["fpn.", "head."]
    missing = [k for k in result.missing_keys if not k.startswith(tuple(allowed))]
    if result.unexpected_keys or missing:
        names = (result.unexpected_keys + missing)[:3]
        raise ModelError(f"{path}: does not match this detector ({len(result.unexpected_keys)} unexpected and "
                         f"{len(missing)} missing tensors, e.g. {', '.join(names)})")
    return {"from": str(init), "classes_reused": same_classes, "tensors_loaded": len(state)}


def label_subset(samples: list, fraction: float, seed: int) -> list:
    """`fraction` of the images, drawn per class (an image counts for its most frequent class; unlabelled ones
    form their own group) with the seed, at least one per group: the same subset for the same seed everywhere."""
    if fraction >= 1.0:
        return list(samples)
    groups: dict[int, list] = {}
    for s in samples:
        labels = np.asarray(s.labels, dtype=np.int64)
        key = int(np.bincount(labels).argmax()) if labels.size else -1
        groups.setdefault(key, []).append(s)
    rng = np.random.default_rng(seed)
    picked = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: str(s.image_path))
        n = max(1, round(fraction * len(members)))
        picked += [members[i] for i in sorted(rng.choice(len(members), n, replace=False))]
    return picked


def _batches(batch_size: int, rng: np.random.Generator, cache: _Cache) -> list[np.ndarray]:
    """One epoch: every training image once, each through a random one of its cached views."""
    by_image: dict[int, list[int]] = {}
    for v, i in enumerate(cache.image_of):
        by_image.setdefault(int(i), []).append(v)
    picks = np.array([rng.choice(vs) for vs in by_image.values()])
    rng.shuffle(picks)
    return [picks[j:j + batch_size] for j in range(0, len(picks), batch_size)]


def train_detector(dataset: Any, out: str | Path, cfg: FitConfig, progress: Progress | None = None,
                   variant: Variant = CLOSED_SET) -> dict:
    """Train on `dataset` (an engine.datasets.detection.DetectionSet: its 'train' samples; 'validation' ones for
    the validation loss), export, parity-check and publish to `out`. Returns {"run_dir", "metadata"}."""
    progress = progress or (lambda _f, _m: None)
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    classes = list(dataset.classes)
    train = [s for s in dataset.samples if s.split == "train"]
    n_train_available = len(train)
    train = label_subset(train, cfg.label_fraction, cfg.seed)
    val = [s for s in dataset.samples if s.split == "validation"]
    if not train:
        raise DatasetError(f"{dataset.root}: no training images in the detection split")
    if not any(len(s.boxes) for s in train):
        raise DatasetError(f"{dataset.root}: the training images have no boxes")
    device = resolve_device(cfg.device)
    det = variant.build(DetectorArch(cfg.backbone, len(classes), cfg.image_size))
    init_info = _load_init(det, cfg.init, classes) if cfg.init else {"from": "imagenet"}
    det.to(device)
    views = _views_per_image(len(train), cfg, det)
    cache, skipped = build_cache(det, train, views, rng, device,
                                 lambda f, m: progress(0.25 * f, m))
    t_cache = time.monotonic() - t0

    head_params = [*det.fpn.parameters(), *det.head.parameters()]
    top_params = det.trunk.top_parameters()
    opt = torch.optim.AdamW([{"params": head_params, "lr": cfg.lr, "base": cfg.lr},
                             {"params": top_params, "lr": 0.0, "base": cfg.lr * cfg.top_lr_factor}],
                            weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(set(cache.image_of.tolist())) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    history: list[dict[str, float]] = []
    step, stopped_early, t_train0, fine_tuning = 0, False, time.monotonic(), False
    det.train()
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = {}
        n_batches = 0
        for idx in _batches(cfg.batch_size, rng, cache):
            elapsed = time.monotonic() - t0
            if cfg.time_budget_s is not None and elapsed > cfg.time_budget_s:
                stopped_early = True
                break
            done = max(step / total, elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0)
            if not fine_tuning and not cfg.freeze_trunk and done >= cfg.frozen_share:
                fine_tuning = True
                for p in top_params:
                    p.requires_grad_(True)
            warm = min(1.0, (step + 1) / cfg.warmup_steps)
            for g in opt.param_groups:
                active = g is opt.param_groups[0] or fine_tuning
                g["lr"] = g["base"] * warm * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))) if active else 0.0
            ti = torch.from_numpy(idx)
            cls, ctr, dist = det.forward_cached(cache.c3[ti].to(device).float(), cache.h16[ti].to(device).float())
            losses = detection_loss(cls, ctr, dist, cache.cls_t[ti].to(device), cache.reg_t[ti].to(device))
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_([*head_params, *top_params], 10.0)
            opt.step()
            step += 1
            n_batches += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if sums:
            history.append({"epoch": epoch + 1, **{k: v / n_batches for k, v in sums.items()}})
            progress(0.25 + 0.65 * (epoch + 1) / cfg.epochs,
                     f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['total']:.3f}")
        if stopped_early:
            break
    t_train = time.monotonic() - t_train0
    det.eval()
    val_loss = validation_loss(det, val, device)
    progress(0.92, "exporting to ONNX, checking parity, validating")
    parity_images = parity_check_images(train + val)
    training = {
        "n_train_images": len(set(cache.image_of.tolist())), "n_train_images_available": n_train_available,
        "label_fraction": cfg.label_fraction, "n_validation_images": len(val),
        "classes": classes, "views_per_image": views, "epochs_run": len(history), "steps": step,
        "stopped_by_time_budget": stopped_early, "seconds_cache": round(t_cache, 1),
        "seconds_train": round(t_train, 1), "seconds_per_step": round(t_train / max(step, 1), 4),
        "seconds_total": round(time.monotonic() - t0, 1), "device": str(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "init": init_info,
        "config": asdict(cfg), "loss_history": history, "validation_loss": val_loss,
        "skipped_images": skipped, "dataset_issues": [str(i) for i in getattr(dataset, "issues", [])][:50],
    }
    meta = variant.publish(det.cpu(), out, classes, parity_images, training, val)
    progress(1.0, f"detector written to {out}")
    return {"run_dir": str(out), "metadata": meta}


@torch.no_grad()
def validation_loss(det: Detector, samples: list, device: torch.device) -> float | None:
    """Mean loss on the validation images as they are (no augmentation); None without validation images."""
    size, (points, levels) = det.arch.image_size, level_points(det.arch.image_size)
    total, n = 0.0, 0
    for s in samples:
        try:
            image = read_image(s.image_path)
        except DefectScopeError:
            continue
        mb = torch.from_numpy(_model_boxes(s.boxes.astype(np.float32), image.shape[:2], size))
        cls_t, reg_t = assign(points, levels, mb, torch.from_numpy(s.labels.astype(np.int64)), det.arch.num_classes)
        cls, ctr, dist = det(to_frame(image, size).to(device))
        total += float(detection_loss(cls, ctr, dist, cls_t[None].to(device), reg_t[None].to(device))["total"])
        n += 1
    return round(total / n, 4) if n else None
