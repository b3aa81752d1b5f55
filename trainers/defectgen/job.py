"""Engine entry points: training a generator (the train_generator job kind) and sampling one into a synthetic
set (engine.synthesis.synthetic_set) that training takes with --extra."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.datasets.segmentation import load_segmentation_split
from engine.jobs.kinds_generator import SampleGeneratorParams, TrainGeneratorParams
from engine.jobs.registry import Progress
from engine.synthesis.synthetic_set import write_synthetic_set
from trainers.common.device import resolve_device
from trainers.defectgen.config import PRESETS
from trainers.defectgen.data import build_tensor
from trainers.defectgen.fit import fit_generator
from trainers.defectgen.sample import sample
from trainers.defectgen.store import load_generator, read_metadata, save_generator

# A sampled image with two types in sizeable amounts cannot be one (mask, type) sample of a synthetic set
# without leaving a defect unlabelled: it is dropped when the second type covers more than this share of the
# defect pixels (a few stray pixels of another type are relabelled as background instead).
MAX_OTHER_TYPE_SHARE = 0.2
MIN_DEFECT_PIXELS = 4  # a sample with fewer defect pixels has nothing to learn from


def train_generator_job(params: TrainGeneratorParams, progress: Progress) -> dict:
    split = load_segmentation_split(params.data, category=params.category, classes=params.classes,
                                    shots_per_type=params.shots_per_type, shots_seed=params.shots_seed,
                                    good_images=params.good_images)
    cfg = PRESETS[params.preset].with_overrides(steps_large=params.steps, steps_small=params.steps,
                                                batch_size=params.batch_size, lr=params.lr,
                                                switch_step=params.switch_step)
    device = resolve_device(params.device)
    t0 = time.monotonic()
    progress(0.0, f"reading {len(split.train)} training images")
    data = build_tensor(split.train, cfg.resolution, len(split.classes))
    large, small, report = fit_generator(data, len(split.classes), cfg, params.seed, device, params.time_budget_s,
                                         lambda f, m: progress(0.02 + 0.95 * f, m))
    training = {
        "trained_on": [s.key for s in split.train], "draws": split.draws,
        "draw": {"shots_per_type": params.shots_per_type, "shots_seed": params.shots_seed,
                 "good_images": params.good_images, "category": params.category},
        "preset": params.preset, "seed": params.seed, "device": str(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "seconds_total": round(time.monotonic() - t0, 1), **asdict(report),
        "dataset_issues": split.issues[:50],
    }
    meta = save_generator(params.out, large.cpu(), small.cpu(), cfg, split.classes, training)
    progress(1.0, f"generator written to {params.out}")
    return {"run_dir": str(params.out), "metadata": meta}


def _as_set_sample(image: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, str] | None:
    """(bool mask, type) of a sampled image, or None when it has no usable defect or two sizeable types."""
    counts = np.bincount(labels.ravel(), minlength=len(classes) + 1)[1:]
    if counts.sum() < MIN_DEFECT_PIXELS:
        return None
    main = int(counts.argmax())
    if counts.sum() - counts[main] > MAX_OTHER_TYPE_SHARE * counts.sum():
        return None
    return labels == main + 1, classes[main]


def synthesize_with_generator(generator: str | Path, out: str | Path, count_per_type: int, seed: int = 0,
                              steps: int | None = None, size: tuple[int, int] | None = None,
                              device: str = "auto", batch_size: int = 16, max_samples_factor: int = 20,
                              progress: Progress | None = None) -> dict[str, Any]:
    """Sample the generator until each type has `count_per_type` usable images (or `max_samples_factor` times the
    total asked for were drawn: a type the generator rarely produces is then short, which the manifest's
    per_type shows) and write them as a synthetic set. Returns the manifest."""
    progress = progress or (lambda _f, _m: None)
    dev = resolve_device(device)
    large, small, cfg, meta = load_generator(generator, dev)
    classes: list[str] = meta["classes"]
    wanted = count_per_type * len(classes)
    limit = wanted * max_samples_factor
    counts = dict.fromkeys(classes, 0)
    stats = {"drawn": 0, "dropped_no_defect_or_mixed": 0, "seconds_sampling": 0.0}

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, str, str]]:
        batch = 0
        while stats["drawn"] < limit and min(counts.values()) < count_per_type:
            t0 = time.monotonic()
            got = sample(large, small, cfg, len(classes), batch_size, seed * 1_000_003 + batch, steps, size,
                         batch_size, dev)
            stats["seconds_sampling"] += time.monotonic() - t0
            stats["drawn"] += batch_size
            for i, (img, lab) in enumerate(zip(got.images, got.masks, strict=True)):
                usable = _as_set_sample(img, lab, classes)
                if usable is None:
                    stats["dropped_no_defect_or_mixed"] += 1
                    continue
                mask, kind = usable
                if counts[kind] >= count_per_type:
                    continue
                counts[kind] += 1
                yield img, mask, kind, f"defectgen:seed{seed}:batch{batch}:{i}"
            progress(min(sum(counts.values()) / wanted, 1.0), f"{sum(counts.values())}/{wanted} samples kept")
            batch += 1

    # `stats` is filled while the samples are written and serialised after them (the manifest is written last),
    # so the manifest records how many draws it took.
    info = {"method": "defectgen", "source": str(generator), "seed": seed,
            "sampling_steps": steps or cfg.sampling_steps, "switch_step": cfg.switch_step,
            "generator_classes": classes, "trained_on": meta["training"].get("trained_on", []), "sampling": stats}
    return write_synthetic_set(out, samples(), info)


def sample_generator_job(params: SampleGeneratorParams, progress: Progress) -> dict:
    size = None
    if params.width is not None or params.height is not None:
        side = read_metadata(params.generator)["config"]["resolution"]
        size = (params.height or side, params.width or side)
    manifest = synthesize_with_generator(params.generator, params.out, params.count_per_type, params.seed,
                                         params.sampling_steps, size, params.device,
                                         max_samples_factor=params.max_draws_factor, progress=progress)
    progress(1.0, f"{len(manifest['samples'])} synthetic images written")
    return {"run_dir": params.out, "per_type": manifest["per_type"], "n_images": len(manifest["samples"]),
            "sampling": manifest["sampling"]}
