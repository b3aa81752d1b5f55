"""Per-class defect segmentation data: the classes, which images train a model, and which are held out.

One class per defect type that has pixel masks (engine.datasets readers: MVTec `ground_truth/<type>/`, a plain
folder's `masks/`...). An image's mask pixels are its defect type (each defective image shows one type, its folder),
every other pixel is background; good images are background throughout.

The split rule, written here once (training and `defectscope eval` both use it):

- Training candidates of a defect type: its masked images that the dataset puts in train/ or validation/. A type
  with none there (the MVTec AD layout keeps every defect in test/, as magnetic tile does) draws from all of its
  masked images instead.
- `shots_per_type` = k: k candidates per type, drawn with `shots_seed` (None: every candidate from the dataset's own
  training split, or half of a type's images when they come from test/). The draw is a seeded permutation of the
  type's images sorted by key, per type (numpy default_rng([seed, hash of the type name])), so k-shot sets are
  nested (the 5-shot set is in the 10-shot set of the same seed) and one type's draw does not depend on others.
  Drawing from test/ must leave at least one image of the type held out.
- Good images for training: `good_images` of the good images in the (resolved) train split, drawn the same way.
- Held out: every masked defective image of the model's classes and every good image of the test split that the
  model did not train on. The model's metadata lists what it trained on (`trained_on`, dataset-relative keys), so
  evaluation holds out exactly the same images with `held_out_samples`.
- Extra samples (e.g. synthetic defects) come from other folders, are added to training as they are (their defect
  types must be among the classes) and are never held out.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.datasets.detection_split import name_hash
from engine.datasets.keys import sample_key
from engine.datasets.registry import load_dataset
from engine.datasets.splits import resolve_splits
from engine.datasets.types import DEFECTIVE, GOOD, Sample
from engine.errors import DatasetError
from engine.synthesis.synthetic_set import check_not_synthetic

TRAIN_SPLITS = ("train", "validation")
DEFAULT_TEST_DRAW_SHARE = 0.5  # shots_per_type None, candidates from test/: half of each type trains
GOOD_STRATUM = "good"


@dataclass(frozen=True)
class SegSample:
    """One image for segmentation: its mask's pixels are class `label` (1..K); label 0 (no mask): all background."""

    image_path: Path
    mask_path: Path | None
    label: int
    key: str  # relative to its dataset root (engine.datasets.keys.sample_key)


@dataclass
class SegmentationSplit:
    root: Path
    classes: list[str]
    train: list[SegSample]
    held_out: list[SegSample]
    draws: dict[str, dict] = field(default_factory=dict)  # per type (and "good"): candidates, drawn, from where
    issues: list[str] = field(default_factory=list)


def _one_category(samples: Sequence[Sample], root: Path) -> None:
    cats = sorted({s.category for s in samples if s.category})
    if len(cats) > 1:
        raise DatasetError(f"{root}: several categories ({', '.join(cats)}); choose one with category")


def segmentation_classes(samples: Sequence[Sample], root: Path, classes: Sequence[str] | None = None) -> list[str]:
    """The defect types with masks (sorted), or `classes` in the order given, each checked against them."""
    found = sorted({s.defect_type for s in samples if s.label == DEFECTIVE and s.mask_path is not None
                    and s.defect_type})
    if not found:
        raise DatasetError(f"{root}: no defective images with masks (a defect segmentation model learns from pixel "
                           "masks, e.g. ground_truth/<defect type>/<name>_mask.png in the MVTec layout)")
    if classes is None:
        return found
    unknown = [c for c in classes if c not in found]
    if unknown:
        raise DatasetError(f"classes: {', '.join(repr(c) for c in unknown)} not a defect type with masks in {root} "
                           f"(found: {', '.join(found)})")
    if len(set(classes)) != len(classes):
        raise DatasetError(f"classes: {', '.join(classes)} names a class twice")
    return list(classes)


def _drawn(members: list[Sample], n: int, seed: int, stratum: str, root: Path) -> list[Sample]:
    ordered = sorted(members, key=lambda s: sample_key(root, s))
    order = np.random.default_rng([seed, name_hash(stratum)]).permutation(len(ordered))
    return [ordered[i] for i in sorted(order[:n])]


def _seg_sample(root: Path, s: Sample, classes: Sequence[str]) -> SegSample:
    label = 0 if s.label == GOOD else classes.index(s.defect_type) + 1
    return SegSample(Path(s.image_path), s.mask_path if label else None, label, sample_key(root, s))


def held_out_samples(samples: Sequence[Sample], root: Path, classes: Sequence[str],
                     trained_keys: Collection[str]) -> list[SegSample]:
    """The held-out images (the rule above): masked defective images of `classes` and good images of the test split
    that are not among `trained_keys`. `samples` as the dataset loaded them (splits are resolved here)."""
    trained = set(trained_keys)
    out = []
    for s in resolve_splits(list(samples)):
        if sample_key(root, s) in trained:
            continue
        if (s.label == DEFECTIVE and s.mask_path is not None and s.defect_type in classes) or \
                (s.label == GOOD and s.split == "test"):
            out.append(_seg_sample(root, s, classes))
    return out


def load_segmentation_split(root: str | Path, *, category: str | None = None, classes: Sequence[str] | None = None,
                            shots_per_type: int | None = None, shots_seed: int = 0,
                            good_images: int | None = None) -> SegmentationSplit:
    """Training and held-out images of the dataset at `root` by the rule above; DatasetError naming the dataset
    (or the field) when it cannot give a model anything to learn from."""
    check_not_synthetic(root, "the data a model is trained and held out on")
    dataset = load_dataset(root, category=category)
    data_root = dataset.root
    samples = resolve_splits(dataset.samples)
    _one_category([s for s in samples if s.label in (GOOD, DEFECTIVE)], data_root)
    names = segmentation_classes(samples, data_root, classes)
    issues = [str(i) for i in dataset.issues]
    no_mask = [s for s in samples if s.label == DEFECTIVE and s.mask_path is None]
    if no_mask:
        issues.append(f"{len(no_mask)} defective images without a mask are not used (e.g. {no_mask[0].image_path})")
    train: list[Sample] = []
    draws: dict[str, dict] = {}
    for name in names:
        masked = [s for s in samples if s.label == DEFECTIVE and s.defect_type == name and s.mask_path is not None]
        own = [s for s in masked if s.split in TRAIN_SPLITS]
        candidates = own or masked
        if shots_per_type is None:
            n = len(own) if own else max(1, int(DEFAULT_TEST_DRAW_SHARE * len(masked)))
        else:
            n = shots_per_type
            limit = len(candidates) if own else len(candidates) - 1
            if n > limit:
                where = "in its training split" if own else "with masks (one at least must stay held out)"
                raise DatasetError(f"shots_per_type: {n} images of defect type '{name}' asked for, but {data_root} "
                                   f"has {limit if own else len(candidates)} {where}")
        train += _drawn(candidates, n, shots_seed, name, data_root)
        draws[name] = {"candidates": len(candidates), "drawn": n, "from": "train split" if own else "all splits"}
    good = [s for s in samples if s.label == GOOD and s.split == "train"]
    n_good = len(good) if good_images is None else min(good_images, len(good))
    train += _drawn(good, n_good, shots_seed, GOOD_STRATUM, data_root)
    draws[GOOD_STRATUM] = {"candidates": len(good), "drawn": n_good, "from": "train split"}
    trained = {sample_key(data_root, s) for s in train}
    return SegmentationSplit(data_root, names, [_seg_sample(data_root, s, names) for s in train],
                             held_out_samples(dataset.samples, data_root, names, trained), draws, issues)


def load_extra_samples(folders: Sequence[str | Path], classes: Sequence[str]) -> tuple[list[SegSample], list[dict]]:
    """Every masked defective image (its type must be one of `classes`) and good image of each folder (any dataset
    layout the readers know), for training as they are; with a summary per folder."""
    out: list[SegSample] = []
    summary = []
    for folder in folders:
        dataset = load_dataset(folder)
        counts: dict[str, int] = {}
        for s in dataset.samples:
            if s.label == DEFECTIVE and s.mask_path is not None:
                if s.defect_type not in classes:
                    raise DatasetError(f"{s.image_path}: extra samples' defect type '{s.defect_type}' is not one of "
                                       f"the classes ({', '.join(classes)})")
            elif s.label != GOOD:
                continue
            out.append(_seg_sample(dataset.root, s, classes))
            counts[s.defect_type or GOOD] = counts.get(s.defect_type or GOOD, 0) + 1
        if not counts:
            raise DatasetError(f"{dataset.root}: no masked defective or good images among the extra samples")
        summary.append({"folder": str(dataset.root), "n_images": sum(counts.values()), "per_type": counts})
    return out, summary
