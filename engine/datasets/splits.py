"""Train/test splits for datasets that have none (a plain folder of good and defective images).

Training and evaluation must agree on which good images were trained on, and the answer must not change when
images are added: each good image goes to test when a hash of its file name falls below `test_fraction`.
Defective images always go to test (the model trains on good images only).
"""

from __future__ import annotations

import dataclasses
import hashlib

from engine.datasets.types import DEFECTIVE, GOOD, Sample

AUTO_TEST_FRACTION = 0.2


def _name_fraction(name: str) -> float:
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def resolve_splits(samples: list[Sample], test_fraction: float = AUTO_TEST_FRACTION) -> list[Sample]:
    """Samples with "unspecified" split assigned, unless the dataset already has a train split."""
    if any(s.split == "train" for s in samples):
        return samples
    out = []
    for s in samples:
        if s.split == "unspecified" and s.label in (GOOD, DEFECTIVE):
            is_test = s.label == DEFECTIVE or _name_fraction(s.image_path.name) < test_fraction
            s = dataclasses.replace(s, split="test" if is_test else "train")
        out.append(s)
    return out
