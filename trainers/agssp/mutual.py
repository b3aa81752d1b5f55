"""Mutual scoring (MuSc-style): anomaly maps for a pool without known-good images, each image judged by the others.

NEU-DET has no defect-free images, so no memory bank of good patches can be built. Instead every image is compared
with R other images of its group: a patch that has a close match in most of them is ordinary; a defect patch has
close matches in few (the images sharing that kind of defect) or none.

- Features: the pip-shipped EfficientNet-Lite0 trunk, PatchCore's locally aware patch features (stride-8 and
  stride-16 stages, 3x3 average, deeper stage upsampled, as trainers.patchcore.model.PatchFeatures), L2-normalised.
  (Measured on 150 magnetic-tile images: the stride-8 stage alone without the average boxes small defects tighter,
  recall 0.37 vs 0.26 at IoU 0.3, but precision halves and pixel AUROC drops 0.73 -> 0.62; the maps are also the
  backbone-pretraining targets, so the PatchCore features stay the default.)
  Images are resized to the area of a `image_side`^2 square with their aspect ratio kept (squashing a tall tile to a
  square erases thin defects), sides multiples of 32; a 200 px NEU image gives a 28 x 28 grid.
- References: within each group, images are put in a random order (seeded) and each is paired with the R/2 next
  and R/2 previous ones (a ring), so every image has exactly R references and each pair's similarity matrix is
  computed once and read both ways (rows: the first image's patches, columns: the second's). A group of at most
  R + 1 images compares all pairs.
- Per patch, its distance to its nearest patch in each reference; patch score = mean of the smallest
  `keep_fraction` (30 %) of those R distances, so a defect type that appears in a few images still stands out,
  while one odd reference cannot make an ordinary patch look anomalous.
- Map = patch scores upsampled to the image and blurred (sigma 4 model-input pixels), as engine.pseudo_boxes'
  CoarseMap does when boxes are made.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch
import torch.nn.functional as F

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.pseudo_boxes import CoarseMap
from trainers.common.device import resolve_device
from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteFeatures

SIDE_MULTIPLE = 32  # every stride-2 layer up to stride 16 sees an even size (the trunk's static TF padding)


@dataclass(frozen=True)
class MutualConfig:
    references: int = 32  # R: other images each image is compared with (all of its group when smaller)
    keep_fraction: float = 0.3  # patch score = mean of this fraction of the smallest per-reference distances
    image_side: int = 224  # images are resized to this side's square area, aspect kept
    backbone: str = "efficientnet-lite0"
    stages: tuple[int, ...] = (2, 4)  # stride 8 and 16
    aggregate: int = 3  # neighbourhood averaged into each patch feature (PatchCore: 3)
    blur_sigma: float = 4.0  # model-input pixels
    batch_size: int = 16  # images per feature batch
    pair_batch: int = 32  # image pairs per similarity batch
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


def model_shape(h: int, w: int, side: int) -> tuple[int, int]:
    """(height, width) fed to the trunk: the area of side x side, the image's aspect, multiples of 32."""
    scale = side / math.sqrt(h * w)
    return (max(SIDE_MULTIPLE, SIDE_MULTIPLE * round(h * scale / SIDE_MULTIPLE)),
            max(SIDE_MULTIPLE, SIDE_MULTIPLE * round(w * scale / SIDE_MULTIPLE)))


def ring_pairs(members: Sequence[int], references: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Unordered image pairs within one group such that every member has exactly `references` partners (rounded
    up to even), or every other member when the group is too small for that."""
    n = len(members)
    if n < 2:
        return []
    half = (references + 1) // 2
    if n - 1 <= 2 * half:
        return [(members[a], members[b]) for a in range(n) for b in range(a + 1, n)]
    order = [members[k] for k in rng.permutation(n)]
    return [(order[p], order[(p + k) % n]) for k in range(1, half + 1) for p in range(n)]


class PatchNet(torch.nn.Module):
    """PatchCore's locally aware patch features with the neighbourhood size as a knob: each stage averaged over an
    `aggregate` x `aggregate` neighbourhood (1: none), the deeper stage upsampled to the stride-8 grid, concatenated."""

    def __init__(self, backbone: str, stages: tuple[int, ...], aggregate: int) -> None:
        super().__init__()
        self.trunk = EfficientNetLiteFeatures(backbone, stages)
        self.aggregate = aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.trunk((x - PIXEL_MEAN) / PIXEL_STD)
        if self.aggregate > 1:
            feats = [F.avg_pool2d(f, self.aggregate, stride=1, padding=self.aggregate // 2, count_include_pad=False)
                     for f in feats]
        size = feats[0].shape[-2:]
        return torch.cat([feats[0], *(F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                      for f in feats[1:])], dim=1)


@dataclass
class _Features:
    feats: torch.Tensor  # [N, Pmax, D] float16 (CPU) L2-normalised, zero rows past each image's own patches
    grids: list[tuple[int, int]]  # patch grid (gh, gw) per image
    sizes: list[tuple[int, int]]  # image (H, W)
    scales: list[float]  # model-input pixels per image pixel (the blur is converted with it)


def _extract(images: Sequence[str | Path], cfg: MutualConfig, device: torch.device,
             report: Callable[[float, str], None]) -> tuple[_Features, dict[int, str]]:
    # channels_last: the trunk's depthwise convolutions run about a quarter faster on CPUs in this layout.
    net = PatchNet(cfg.backbone, cfg.stages, cfg.aggregate).to(device).eval().to(memory_format=torch.channels_last)
    n = len(images)
    errors: dict[int, str] = {}
    per_image: list[torch.Tensor | None] = [None] * n
    grids: list[tuple[int, int]] = [(0, 0)] * n
    sizes: list[tuple[int, int]] = [(0, 0)] * n
    scales = [1.0] * n
    batch: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}

    def flush(shape: tuple[int, int]) -> None:
        items = batch.pop(shape, [])
        if not items:
            return
        x = torch.from_numpy(np.stack([a for _, a in items])).to(device).permute(0, 3, 1, 2).float()
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            f = F.normalize(net(x), dim=1)  # [B, D, gh, gw]
        for (i, _), fi in zip(items, f, strict=True):
            grids[i] = (fi.shape[1], fi.shape[2])
            per_image[i] = fi.flatten(1).transpose(0, 1).to("cpu", torch.float16)

    for i, path in enumerate(images):
        try:
            img = read_image(path)
        except DefectScopeError as exc:
            errors[i] = str(exc)
            continue
        h, w = img.shape[:2]
        mh, mw = model_shape(h, w, cfg.image_side)
        sizes[i], scales[i] = (h, w), math.sqrt(mh * mw / (h * w))
        batch.setdefault((mh, mw), []).append((i, cv2.resize(img, (mw, mh), interpolation=cv2.INTER_AREA)))
        if len(batch[(mh, mw)]) >= cfg.batch_size:
            flush((mh, mw))
        if (i + 1) % 50 == 0 or i + 1 == n:
            report((i + 1) / n, f"features of {i + 1}/{n} images")
    for shape in list(batch):
        flush(shape)

    ok = [f for f in per_image if f is not None]
    dim = ok[0].shape[1] if ok else 1
    pmax = max((f.shape[0] for f in ok), default=1)
    feats = torch.zeros(n, pmax, dim, dtype=torch.float16)
    for i, f in enumerate(per_image):
        if f is not None:
            feats[i, : f.shape[0]] = f
    return _Features(feats, grids, sizes, scales), errors


def mutual_maps(images: Sequence[str | Path], groups: Sequence[str], cfg: MutualConfig | None = None,
                progress: Callable[[float, str], None] | None = None) -> tuple[list[CoarseMap | None], dict[int, str], dict]:
    """Each image's anomaly map by mutual scoring within its group; None and a reason for an unreadable image.
    Also returns timings and counts (what pool.json records)."""
    cfg = cfg or MutualConfig()
    if not 0.0 < cfg.keep_fraction <= 1.0 or cfg.references < 1:
        raise ValueError("mutual scoring: keep_fraction must be in (0, 1] and references >= 1")
    report = progress or (lambda _f, _m: None)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    fx, errors = _extract(images, cfg, device, lambda f, m: report(0.5 * f, m))
    t_features = time.perf_counter() - t0

    # Pairs within each group, of the readable images only.
    rng = np.random.default_rng(cfg.seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if i not in errors:
            members.setdefault(g, []).append(i)
    lonely = [g for g, m in members.items() if len(m) < 2]
    if lonely:
        raise DefectScopeError(f"mutual scoring compares images within a group, but group '{lonely[0]}' has one "
                               "readable image; give each pool folder at least 2 images (better 30 or more), or "
                               "score with an anomaly model")
    pairs = [p for g in members for p in ring_pairs(members[g], cfg.references, rng)]
    counts = np.zeros(len(images), np.int64)
    for a, b in pairs:
        counts[a] += 1
        counts[b] += 1
    r_max = int(counts.max()) if len(pairs) else 1
    pmax = fx.feats.shape[1]
    valid = torch.zeros(len(images), pmax, dtype=torch.bool)
    for i, (gh, gw) in enumerate(fx.grids):
        valid[i, : gh * gw] = True
    padded = not bool(valid[[i for i in range(len(images)) if i not in errors]].all())
    # dist[i, r, p]: distance of image i's patch p to its nearest patch in i's r-th reference
    _check_memory(len(images) * r_max * pmax * 4, len(images), r_max)
    dist = torch.full((len(images), r_max, pmax), float("inf"), dtype=torch.float32)
    slot = np.zeros(len(images), np.int64)
    pair_arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    t1 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(pair_arr), cfg.pair_batch):
            chunk = pair_arr[start:start + cfg.pair_batch]
            ia, ib = torch.from_numpy(chunk[:, 0]), torch.from_numpy(chunk[:, 1])
            fa = fx.feats[ia].to(device, torch.float32)
            fb = fx.feats[ib].to(device, torch.float32)
            sim = torch.bmm(fa, fb.transpose(1, 2))  # [B, Pa, Pb] cosine similarities
            if padded:  # padding rows (images with fewer patches) must never be anyone's nearest patch
                # In place: the similarity batch is the largest tensor here; padded rows and columns are read
                # by nobody once masked (their own results are dropped below).
                best_in_b = sim.masked_fill_(~valid[ib].to(device)[:, None, :], -2.0).amax(dim=2)  # per patch of a
                best_in_a = sim.masked_fill_(~valid[ia].to(device)[:, :, None], -2.0).amax(dim=1)  # per patch of b
            else:
                best_in_b, best_in_a = sim.amax(dim=2), sim.amax(dim=1)
            da = torch.sqrt(torch.clamp(2.0 - 2.0 * best_in_b, min=0.0)).cpu()
            db = torch.sqrt(torch.clamp(2.0 - 2.0 * best_in_a, min=0.0)).cpu()
            for k, (a, b) in enumerate(chunk):
                dist[a, slot[a]] = da[k]
                dist[b, slot[b]] = db[k]
                slot[a] += 1
                slot[b] += 1
            done = min(start + cfg.pair_batch, len(pair_arr))
            if done == len(pair_arr) or (start // cfg.pair_batch) % 50 == 0:
                report(0.5 + 0.5 * done / max(1, len(pair_arr)), f"compared {done}/{len(pair_arr)} image pairs")
    t_pairs = time.perf_counter() - t1

    maps: list[CoarseMap | None] = []
    for i in range(len(images)):
        if i in errors:
            maps.append(None)
            continue
        r = int(counts[i])
        keep = max(1, round(cfg.keep_fraction * r))
        gh, gw = fx.grids[i]
        nearest = torch.sort(dist[i, :r, : gh * gw], dim=0).values[:keep]  # smallest per-reference distances
        score = nearest.mean(dim=0).reshape(gh, gw).numpy().astype(np.float32)
        maps.append(CoarseMap(score, fx.sizes[i], blur_sigma=cfg.blur_sigma / fx.scales[i]))
    stats = {"features_s": round(t_features, 2), "pairs_s": round(t_pairs, 2), "n_pairs": len(pairs),
             "references": {"asked": cfg.references, "min": int(counts[counts > 0].min()) if len(pairs) else 0,
                            "max": r_max},
             "device": str(device), "torch_threads": torch.get_num_threads(), "config": cfg.to_dict()}
    return maps, errors, stats


def _check_memory(nbytes: int, n_images: int, references: int) -> None:
    """Refuse, before allocating, a distance table that would not fit: the OS would kill the job without a word."""
    available = psutil.virtual_memory().available
    if nbytes > 0.8 * available:
        raise DefectScopeError(
            f"mutual scoring of {n_images} images against {references} references each needs "
            f"{nbytes / 2**30:.1f} GiB for its distance table, {available / 2**30:.1f} GiB is free: lower "
            "'references', or split the pool into several runs")
