"""What a decision threshold does to a set of scored images: counts, errors, flips and per-defect recall.

Called on every move of the threshold slider, so the dicts are turned into arrays once (ScoreSet) and each
threshold is then a handful of vectorised comparisons: well under a millisecond for 10k images.

Convention (as engine.runtime.anomaly and engine.metrics.f1_max): an image is NG when score >= threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN

# Defective images whose defect type is not known are grouped under this name in per-defect recall.
UNSPECIFIED_DEFECT = "(unspecified)"

_LABEL_CODES = {GOOD: 0, DEFECTIVE: 1, UNKNOWN: -1}


@dataclass(frozen=True)
class ThresholdImpact:
    """Counts at one threshold. Unknown-label images count only in the predicted totals."""

    threshold: float
    predicted_ng: int
    predicted_ok: int
    false_positives: int  # good images predicted NG
    misses: int  # defective images predicted OK
    n_good: int
    n_defective: int
    n_unknown: int
    flipped: int  # images whose predicted verdict differs from the one at `previous` (0 without one)
    previous: float | None = None

    @property
    def n_images(self) -> int:
        return self.predicted_ng + self.predicted_ok

    @property
    def detected(self) -> int:
        """Defective images predicted NG (true positives)."""
        return self.n_defective - self.misses


class ScoreSet:
    """Scores and labels of a set of images as arrays, ready for many thresholds.

    The images are the keys of `scores`; a key missing from `labels` counts as UNKNOWN, labels of keys without a
    score are ignored (not scored yet). Raises ValueError for a non-finite score or an unknown label value, naming
    the image, so bad data fails once here rather than on every slider move.
    """

    def __init__(
        self,
        scores: Mapping[str, float],
        labels: Mapping[str, str],
        defect_types: Mapping[str, str | None] | None = None,
    ) -> None:
        self.keys = list(scores)
        self.scores = np.fromiter((scores[k] for k in self.keys), dtype=np.float64, count=len(self.keys))
        bad = np.flatnonzero(~np.isfinite(self.scores))
        if bad.size:
            k = self.keys[bad[0]]
            raise ValueError(f"score of {k!r} is {scores[k]!r}; scores must be finite numbers")
        codes = []
        for k in self.keys:
            label = labels.get(k, UNKNOWN)
            if label not in _LABEL_CODES:
                raise ValueError(
                    f"label of {k!r} is {label!r}; expected {GOOD!r}, {DEFECTIVE!r} or {UNKNOWN!r}"
                )
            codes.append(_LABEL_CODES[label])
        self.codes = np.asarray(codes, dtype=np.int8)
        self.good = self.codes == 0
        self.defective = self.codes == 1
        # Defect types as small integer codes, so per-defect recall is one bincount.
        types = defect_types or {}
        names = [
            types.get(k) or UNSPECIFIED_DEFECT for k, d in zip(self.keys, self.defective, strict=True) if d
        ]
        self.defect_names, codes_of_defective = np.unique(
            np.asarray(names, dtype=object), return_inverse=True
        )
        self.defect_codes = np.asarray(codes_of_defective, dtype=np.int64).reshape(-1)
        self.defect_totals = np.bincount(self.defect_codes, minlength=len(self.defect_names))

    def __len__(self) -> int:
        return len(self.keys)

    def predicted_ng(self, threshold: float) -> np.ndarray:
        """Boolean NG mask in the order of self.keys."""
        return self.scores >= threshold

    def impact(self, threshold: float, previous: float | None = None) -> ThresholdImpact:
        ng = self.scores >= threshold
        n_ng = int(np.count_nonzero(ng))
        n_good = int(np.count_nonzero(self.good))
        n_defective = int(np.count_nonzero(self.defective))
        flipped = 0 if previous is None else int(np.count_nonzero(ng != (self.scores >= previous)))
        return ThresholdImpact(
            threshold=float(threshold),
            predicted_ng=n_ng,
            predicted_ok=len(self.keys) - n_ng,
            false_positives=int(np.count_nonzero(ng & self.good)),
            misses=int(np.count_nonzero(~ng & self.defective)),
            n_good=n_good,
            n_defective=n_defective,
            n_unknown=len(self.keys) - n_good - n_defective,
            flipped=flipped,
            previous=None if previous is None else float(previous),
        )

    def per_defect_recall(self, threshold: float) -> dict[str, tuple[int, int]]:
        """{defect type: (detected, total)} over defective-labelled images, sorted by defect type."""
        caught = self.scores[self.defective] >= threshold
        detected = np.bincount(self.defect_codes[caught], minlength=len(self.defect_names))
        return {
            str(name): (int(d), int(t))
            for name, d, t in zip(self.defect_names, detected, self.defect_totals, strict=True)
        }


def threshold_impact(
    scores: Mapping[str, float],
    labels: Mapping[str, str],
    threshold: float,
    previous: float | None = None,
) -> ThresholdImpact:
    """Counts at `threshold` (NG when score >= threshold), and flips vs `previous`. See ScoreSet for many calls."""
    return ScoreSet(scores, labels).impact(threshold, previous)


def per_defect_recall(
    scores: Mapping[str, float],
    labels: Mapping[str, str],
    defect_types: Mapping[str, str | None],
    threshold: float,
) -> dict[str, tuple[int, int]]:
    """{defect type: (detected, total)} of defective-labelled images at `threshold`."""
    return ScoreSet(scores, labels, defect_types).per_defect_recall(threshold)
