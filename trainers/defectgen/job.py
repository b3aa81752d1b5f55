"""Engine entry points: training a generator (the train_generator job kind) and sampling one into a synthetic
set (engine.synthesis.synthetic_set) that training takes with --extra.

A synthetic image is a real good part of the training split with a generated defect window pasted on it
(engine.synthesis.procedural.pasted_defect: cut along the generated mask, brightness matched, edge feathered), at
a window size the real defects of that type had; its mask is exactly the pasted generated mask.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from engine.datasets.imageio import read_image
from engine.datasets.segmentation import load_segmentation_split
from engine.errors import DefectScopeError
from engine.jobs.kinds_generator import SampleGeneratorParams, TrainGeneratorParams
from engine.jobs.registry import Progress
from engine.synthesis.procedural import Donor, pasted_defect
from engine.synthesis.synthetic_set import write_synthetic_set
from trainers.common.device import resolve_device
from trainers.defectgen.config import PRESETS
from trainers.defectgen.data import defect_windows
from trainers.defectgen.fit import fit_generator
from trainers.defectgen.sample import sample
from trainers.defectgen.store import load_generator, save_generator

MIN_DEFECT_PIXELS = 4  # a generated window with fewer defect pixels of its type has nothing to learn from
SCALE_JITTER = (0.8, 1.25)  # a pasted window's side: a real window side of its type times this


def train_generator_job(params: TrainGeneratorParams, progress: Progress) -> dict:
    split = load_segmentation_split(params.data, category=params.category, classes=params.classes,
                                    shots_per_type=params.shots_per_type, shots_seed=params.shots_seed,
                                    good_images=0)
    cfg = PRESETS[params.preset].with_overrides(steps_large=params.steps, steps_small=params.steps,
                                                batch_size=params.batch_size, lr=params.lr,
                                                switch_step=params.switch_step)
    device = resolve_device(params.device)
    t0 = time.monotonic()
    progress(0.0, f"cutting defect windows from {len(split.train)} training images")
    data = defect_windows(split.train, cfg, split.classes, params.seed)
    large, small, report = fit_generator(data, len(split.classes), cfg, params.seed, device, params.time_budget_s,
                                         lambda f, m: progress(0.02 + 0.95 * f, m))
    training = {
        "data": str(split.root), "trained_on": [s.key for s in split.train], "draws": split.draws,
        "draw": {"shots_per_type": params.shots_per_type, "shots_seed": params.shots_seed,
                 "category": params.category},
        "n_windows": int(data.labels.shape[0]), "window_sides": data.sides, "grey": data.grey,
        "preset": params.preset, "seed": params.seed, "device": str(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "seconds_total": round(time.monotonic() - t0, 1), **asdict(report),
        "dataset_issues": split.issues[:50],
    }
    meta = save_generator(params.out, large.cpu(), small.cpu(), cfg, split.classes, training)
    progress(1.0, f"generator written to {params.out}")
    return {"run_dir": str(params.out), "metadata": meta}


def _window_donor(window: np.ndarray, labels: np.ndarray, k: int, name: str, side: int) -> Donor | None:
    """The generated window of type index k resized to `side` px as a paste donor, or None when it painted
    (almost) nothing of its type. Pixels the model gave another type are background here: the window was asked
    for type k, and its mask is what gets pasted."""
    if int((labels == k + 1).sum()) < MIN_DEFECT_PIXELS:
        return None
    image = cv2.resize(window, (side, side), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize((labels == k + 1).astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR) >= 0.5
    if int(mask.sum()) < MIN_DEFECT_PIXELS:
        return None
    return Donor(image, mask, name)


def good_parts(data: str | Path, meta: dict[str, Any]) -> list[Path]:
    """The training split's good images of `data` under the generator's draw (never a held-out image)."""
    draw = meta["training"].get("draw", {})
    split = load_segmentation_split(data, category=draw.get("category"), classes=meta["classes"],
                                    shots_per_type=draw.get("shots_per_type"), shots_seed=draw.get("shots_seed", 0),
                                    good_images=None)
    goods = [s.image_path for s in split.train if s.label == 0]
    if not goods:
        raise DefectScopeError(f"{split.root}: no good image in the training split to paste generated defects on")
    return goods


def synthesize_with_generator(generator: str | Path, out: str | Path, count_per_type: int, seed: int = 0,
                              steps: int | None = None, data: str | Path | None = None, device: str = "auto",
                              batch_size: int = 16, max_samples_factor: int = 20,
                              progress: Progress | None = None) -> dict[str, Any]:
    """`count_per_type` synthetic images per defect type: generated windows of that type pasted on the good parts
    of `data` (default: the dataset the generator trained on). A window that painted nothing of its type is
    dropped and another drawn, up to `max_samples_factor` times the count (a type the generator cannot paint is
    then short, which the manifest's per_type shows). Returns the manifest."""
    progress = progress or (lambda _f, _m: None)
    dev = resolve_device(device)
    large, small, cfg, meta = load_generator(generator, dev)
    classes: list[str] = meta["classes"]
    sides = meta["training"]["window_sides"]
    grey = bool(meta["training"].get("grey", False))
    source = data or meta["training"]["data"]
    goods = good_parts(source, meta)
    rng = np.random.default_rng(seed)
    wanted = count_per_type * len(classes)
    stats = {"drawn": 0, "dropped_nothing_painted": 0, "seconds_sampling": 0.0}

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, str, str]]:
        made, batch = 0, 0
        for k, name in enumerate(classes):
            kept, drawn = 0, 0
            while kept < count_per_type and drawn < count_per_type * max_samples_factor:
                m = min(batch_size, count_per_type - kept)
                t0 = time.monotonic()
                got = sample(large, small, cfg, len(classes), [k] * m, seed * 1_000_003 + batch, steps, m, dev)
                stats["seconds_sampling"] += time.monotonic() - t0
                stats["drawn"] += m
                drawn += m
                for i, (window, labels) in enumerate(zip(got.images, got.masks, strict=True)):
                    if grey:  # a few steps leave a slight colour cast on grey parts; the data had none
                        window = np.repeat(window.mean(-1, keepdims=True).round().astype(np.uint8), 3, -1)
                    good = read_image(goods[int(rng.integers(len(goods)))])
                    side = round(float(rng.choice(sides[name])) * rng.uniform(*SCALE_JITTER))
                    donor = _window_donor(window, labels, k, name, max(4, min(side, *good.shape[:2])))
                    if donor is None:
                        stats["dropped_nothing_painted"] += 1
                        continue
                    image, mask = pasted_defect(good, donor, rng)
                    kept += 1
                    made += 1
                    yield image, mask, name, f"defectgen:seed{seed}:batch{batch}:{i}"
                progress(min(made / wanted, 1.0), f"{made}/{wanted} samples kept")
                batch += 1

    # `stats` is filled while the samples are written and serialised after them (the manifest is written last),
    # so the manifest records how many draws it took.
    info = {"method": "defectgen", "source": str(generator), "good_parts_from": str(source), "seed": seed,
            "sampling_steps": steps or cfg.sampling_steps, "switch_step": cfg.switch_step,
            "generator_classes": classes, "trained_on": meta["training"].get("trained_on", []), "sampling": stats}
    return write_synthetic_set(out, samples(), info)


def sample_generator_job(params: SampleGeneratorParams, progress: Progress) -> dict:
    manifest = synthesize_with_generator(params.generator, params.out, params.count_per_type, params.seed,
                                         params.sampling_steps, params.data, params.device,
                                         max_samples_factor=params.max_draws_factor, progress=progress)
    progress(1.0, f"{len(manifest['samples'])} synthetic images written")
    return {"run_dir": params.out, "per_type": manifest["per_type"], "n_images": len(manifest["samples"]),
            "sampling": manifest["sampling"]}
