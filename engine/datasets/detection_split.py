"""The stable train/validation/test split of a box-labelled set that has no split of its own.

The anomaly rule (engine.datasets.splits: every defective image is for testing) would leave a detector nothing to
learn from, so detection sets without a split get 70/10/20 of their labelled images, stratified by class: within
each class (an image's most frequent class; images without boxes form their own group) the images are ordered by
a hash of their name and the first 20 % go to test, the next 10 % to validation, the rest to train. A hash of the
name, not a random generator, so the split is the same on every run, machine and Python version; the published
NEU-DET split files (engine/datasets/splits/) are this rule applied to that set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

TRAIN, VALIDATION, TEST = "train", "validation", "test"
FRACTIONS = {TRAIN: 0.7, VALIDATION: 0.1, TEST: 0.2}
BACKGROUND = ""  # the stratum of images without boxes


def name_hash(name: str) -> int:
    """The order key of one image name (sha1, so it does not depend on PYTHONHASHSEED or the platform)."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big")


def detection_split(names: Iterable[str], strata: Mapping[str, str] | None = None) -> dict[str, str]:
    """{name: "train" | "validation" | "test"} for image names (file names or root-relative keys).

    `strata` maps a name to its class (missing names: one shared group); each class is split 70/10/20 on its own
    so a rare class is present in every part. Counts per class: test = round(0.2 n), validation = round(0.1 n),
    the rest train, so a class of 300 images gives exactly 210/30/60.
    """
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):  # order-preserving de-duplication
        groups.setdefault((strata or {}).get(name, BACKGROUND), []).append(name)
    out: dict[str, str] = {}
    for members in groups.values():
        ordered = sorted(members, key=lambda n: (name_hash(n), n))
        n_test = round(FRACTIONS[TEST] * len(ordered))
        n_val = round(FRACTIONS[VALIDATION] * len(ordered))
        for i, name in enumerate(ordered):
            out[name] = TEST if i < n_test else VALIDATION if i < n_test + n_val else TRAIN
    return out


def primary_class(labels: Iterable[str]) -> str:
    """An image's stratum: its most frequent class, ties to the name first in sort order; BACKGROUND without."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return BACKGROUND
    return min(counts, key=lambda c: (-counts[c], c))
