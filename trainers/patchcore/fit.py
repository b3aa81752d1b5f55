"""Training loop of the memory-bank model: features of good images -> coreset bank -> calibration -> ONNX."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import engine
from engine.datasets import GOOD, Sample, load_dataset
from engine.datasets.imageio import read_image
from engine.datasets.splits import resolve_splits
from engine.errors import DatasetError, DefectScopeError
from engine.jobs.registry import Progress
from trainers.common.device import resolve_device
from trainers.common.io import atomic_write
from trainers.common.onnx_graph import preprocess_model
from trainers.patchcore.coreset import greedy_coreset
from trainers.patchcore.export import METADATA_FILE, export_model
from trainers.patchcore.model import PatchCoreModel, PatchFeatures, ScaleBranch


@dataclass
class TrainConfig:
    image_size: int = 256
    resize: str = "stretch"  # see trainers.common.onnx_graph.RESIZE_POLICIES; measured best on real sets
    backbone: str = "efficientnet-lite0"
    stages: tuple[int, int] = (2, 4)
    # Box-downsampling factors of the scale branches: 1 localises small defects, 2 also sees large-area ones
    # (magnetic tile image AUROC 0.937 -> 0.947) but blurs fine textures (grid pixel AUROC 0.955 -> 0.876).
    scales: tuple[int, ...] = (1,)
    # Hard cap on bank rows per scale: memory and latency stay bounded on any training set (10k keeps a 256 px
    # image under 40 ms on 2 CPU cores; 16k measured 46 ms).
    bank_size: int = 10000
    coreset_ratio: float = 0.1
    max_coreset_candidates: int = 400_000
    holdout_fraction: float = 0.1  # good images kept out of the bank to calibrate the threshold
    max_holdout: int = 80
    max_position_images: int = 80  # training images scored leave-one-image-out for the position statistics
    position_grid: int = 32
    position_prior: float = 10.0  # pseudo-count pulling per-position statistics toward the global ones
    blur_sigma: float = 4.0
    threshold_sigmas: float = 3.0
    device: str = "auto"
    seed: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    metadata: dict = field(default_factory=dict)


MIN_GOOD_IMAGES = 4


def split_holdout(samples: list[Sample], fraction: float, max_holdout: int) -> tuple[list[Sample], list[Sample]]:
    """Every k-th image is held out (deterministic, spread over the whole set); at least two when possible."""
    n = len(samples)
    n_hold = min(max_holdout, round(n * fraction))
    # Two held-out images where the set allows it: with one, the good parts' spread is unknown, the threshold sits
    # on the center and float32 noise of the exported graph becomes a visible score.
    if n >= 2:
        n_hold = max(min(2, n // 2, max_holdout), n_hold)
    if n_hold == 0:
        return samples, []
    step = n / n_hold
    hold_idx = {int(i * step + step / 2) for i in range(n_hold)}
    train = [s for i, s in enumerate(samples) if i not in hold_idx]
    hold = [s for i, s in enumerate(samples) if i in hold_idx]
    return train, hold


def train_anomaly(
    data_root: str | Path,
    category: str | None,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a memory-bank model on the good training images of one category and export it to `out_dir`."""
    cfg = config or TrainConfig()
    report = progress or (lambda _f, _m: None)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)

    dataset = load_dataset(data_root, category=category)
    samples = resolve_splits(dataset.samples)
    goods = [s for s in samples if s.split == "train" and s.label == GOOD]
    if not goods:
        what = f"category '{category}'" if category else "the dataset"
        raise DatasetError(f"{data_root}: {what} has no good training images (train/good or good/ is empty)")
    if len(goods) < MIN_GOOD_IMAGES:
        # Fewer leave one held-out image: no spread of good scores to set a threshold from (see split_holdout).
        what = f"category '{category}'" if category else "the dataset"
        raise DatasetError(f"{data_root}: {what} has {len(goods)} good training images; the model needs at least "
                           f"{MIN_GOOD_IMAGES} (two are held out to set the threshold)")
    train_samples, holdout_samples = split_holdout(goods, cfg.holdout_fraction, cfg.max_holdout)

    pre = ort.InferenceSession(
        preprocess_model(cfg.image_size, cfg.resize).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    features = PatchFeatures(cfg.backbone, cfg.stages).to(device).eval()
    factors = tuple(cfg.scales)
    skipped: list[str] = []

    def load(sample: Sample) -> torch.Tensor | None:
        try:
            img = read_image(sample.image_path)
        except DefectScopeError as exc:
            skipped.append(str(exc))
            return None
        return torch.from_numpy(pre.run(None, {"image": img})[0]).to(device)

    # 1. patch features of every training image at every scale (grids kept for leave-one-image-out scoring)
    chunks: list[list[torch.Tensor]] = [[] for _ in factors]
    grids: list[list[tuple[int, int]]] = [[] for _ in factors]
    with torch.inference_mode():
        for i, sample in enumerate(train_samples):
            x = load(sample)
            if x is not None:
                for b, factor in enumerate(factors):
                    f = features(x if factor == 1 else torch.nn.functional.avg_pool2d(x, factor))
                    chunks[b].append(f[0].reshape(f.shape[1], -1).transpose(0, 1).to("cpu", torch.float32))
                    grids[b].append((f.shape[2], f.shape[3]))
            report(0.5 * (i + 1) / len(train_samples), f"features {i + 1}/{len(train_samples)}")
    if not chunks[0]:
        raise DatasetError(f"{data_root}: none of the {len(train_samples)} good training images could be read")
    n_train_read = len(chunks[0])
    t_features = time.perf_counter() - t_start

    # 2. one coreset memory bank per scale
    banks, bank_owners, patches_per_scale = [], [], []
    for b in range(len(factors)):
        owner = torch.cat([torch.full((len(c),), i, dtype=torch.int32) for i, c in enumerate(chunks[b])])
        patches = torch.cat(chunks[b])
        chunks[b] = []
        n_bank = int(min(cfg.bank_size, max(1, round(cfg.coreset_ratio * len(patches)))))
        lo, hi = 0.5 + 0.4 * b / len(factors), 0.5 + 0.4 * (b + 1) / len(factors)
        idx = greedy_coreset(
            patches,
            n_bank,
            max_candidates=cfg.max_coreset_candidates,
            seed=cfg.seed,
            progress=lambda f, lo=lo, hi=hi, n=n_bank: report(lo + (hi - lo) * f, f"coreset {int(f * n)}/{n}"),
        )
        banks.append(patches[idx].clone())
        bank_owners.append(owner[idx])
        patches_per_scale.append(patches)
    n_patches = sum(len(p) for p in patches_per_scale)
    t_coreset = time.perf_counter() - t_start - t_features
    report(0.9, "calibrating on held-out good images")

    # 3. calibration. Per branch: position statistics and a common scale, from held-out images and training images
    # scored leave-one-image-out. Final threshold: from truly held-out images only (never seen by any bank).
    model = PatchCoreModel(features, [bk.to(device) for bk in banks], factors, cfg.blur_sigma, cfg.position_grid)
    model = model.to(device).eval()
    hold_x = [x for x in (load(s) for s in holdout_samples) if x is not None]
    n_stats = 0
    with torch.inference_mode():
        hold_branch_scores = []
        for b, branch in enumerate(model.branches):
            hold_maps = [model.branch_map(branch, x).cpu() for x in hold_x]
            loo_maps = leave_one_out_maps(
                branch, patches_per_scale[b], bank_owners[b], grids[b], model.features.stride,
                cfg.max_position_images, device,
            )
            stats_maps = hold_maps + loo_maps
            n_stats = max(n_stats, len(stats_maps))
            if stats_maps:
                pooled = torch.cat([torch.nn.functional.adaptive_avg_pool2d(m, cfg.position_grid) for m in stats_maps])
                mean, std = position_statistics(pooled, cfg.position_prior)
                branch.set_position_statistics(mean.to(device), std.to(device))
            std_max = [float(branch.standardise(m.to(device)).amax()) for m in stats_maps]
            branch.set_calibration(*calibrate(std_max, cfg.threshold_sigmas))
            hold_branch_scores.append(
                [float(branch.calibrated(branch.standardise(m.to(device))).amax()) for m in hold_maps]
            )
        hold_scores = [sum(v) / len(v) for v in zip(*hold_branch_scores, strict=True)]
    del patches_per_scale
    center, threshold = calibrate(hold_scores, cfg.threshold_sigmas)
    model.set_normalisation(center, threshold)
    report(0.92, "exporting ONNX")

    # 4. export (ONNX + metadata); the parity check runs on real training images
    model = model.to("cpu")
    parity_images = [s.image_path for s in (holdout_samples or train_samples)[:2]]
    out = Path(out_dir)
    metadata = {
        "kind": "anomaly/patchcore",
        "category": category,
        "dataset_root": str(Path(data_root).resolve()),
        "dataset_format": dataset.format,
        "backbone": cfg.backbone,
        "stages": list(cfg.stages),
        "scales": list(factors),
        "input_size": cfg.image_size,
        "resize": cfg.resize,
        "threshold": 0.5,
        "normalisation": {"center_raw": center, "threshold_raw": threshold},
        "training": {
            "n_train_images": n_train_read,
            "n_holdout_images": len(hold_scores),
            "n_position_statistics_images": n_stats,
            "holdout_raw_scores": [round(s, 6) for s in hold_scores],
            "n_patches": n_patches,
            "bank_size": sum(len(bk) for bk in banks),
            "bank_sizes": [len(bk) for bk in banks],
            "feature_dim": int(banks[0].shape[1]),
            "skipped_files": skipped,
            "device": str(device),
            "seconds_features": round(t_features, 2),
            "seconds_coreset": round(t_coreset, 2),
            "config": asdict(cfg),
        },
        "defectscope_version": engine.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
    }
    export_model(model, out, metadata, cfg.image_size, parity_images, cfg.resize)
    metadata = json.loads((out / METADATA_FILE).read_text())
    metadata["training"]["seconds_total"] = round(time.perf_counter() - t_start, 2)
    atomic_write(out / METADATA_FILE, json.dumps(metadata, indent=2).encode())
    report(1.0, "done")
    return TrainResult(out, metadata)


def leave_one_out_maps(
    branch: ScaleBranch,
    patches: torch.Tensor,
    bank_owner: torch.Tensor,
    grids: list[tuple[int, int]],
    stride: int,
    max_images: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """Distance maps of training images scored against the branch's bank minus their own patches.

    A training image's patches are in the bank, so its plain map is near zero; without its own rows the bank
    sees it like a new good part. This gives position statistics from many images even when only a handful
    can be held out, at the cost of one nearest-neighbour search per image.
    """
    n = len(grids)
    if n < 2 or max_images <= 0:
        return []
    starts = torch.zeros(n + 1, dtype=torch.long)
    starts[1:] = torch.cumsum(torch.tensor([h * w for h, w in grids]), 0)
    chosen = sorted({int(i * n / min(n, max_images)) for i in range(min(n, max_images))})
    maps = []
    for i in chosen:
        h, w = grids[i]
        f = patches[starts[i] : starts[i + 1]].to(device).transpose(0, 1).reshape(1, -1, h, w)
        dist = branch.patch_distances(f, exclude=(bank_owner == i).to(device))
        maps.append(branch.smooth(dist, (h * stride, w * stride)).cpu())
    return maps


def position_statistics(maps: torch.Tensor, prior: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell mean and std of held-out good maps (N x 1 x G x G), shrunk toward the global mean and std.

    With few held-out images (n small against `prior`) the result tends to a global affine map, i.e. nearly
    the identity on rankings; with many it captures where good parts are systematically unusual.
    """
    n = maps.shape[0]
    cell_mean = maps.mean(0)
    cell_var = maps.var(0, unbiased=False) if n > 1 else torch.zeros_like(cell_mean)
    global_mean = maps.mean()
    global_var = maps.var(unbiased=False) if maps.numel() > 1 else torch.tensor(1.0)
    w = n / (n + prior)
    mean = w * cell_mean + (1 - w) * global_mean
    var = w * cell_var + (1 - w) * global_var
    std = torch.sqrt(torch.clamp(var, min=1e-6)).clamp(min=0.1 * float(torch.sqrt(global_var) + 1e-6))
    return mean, std


def calibrate(hold_scores: list[float], sigmas: float) -> tuple[float, float]:
    """(center, threshold) in raw score units from held-out good images.

    center = median; threshold = mean + `sigmas` standard deviations, never below the largest held-out score,
    so no known-good image is rejected by default. With a single held-out image, 20% above its score.
    """
    if not hold_scores:
        return 0.0, 1.0
    s = np.asarray(hold_scores, dtype=np.float64)
    center = float(np.median(s))
    if len(s) == 1:
        return center, float(s[0] * 1.2 + 1e-6)
    threshold = max(float(s.mean() + sigmas * s.std(ddof=1)), float(s.max()) * 1.001)
    return center, max(threshold, center + 1e-6)
