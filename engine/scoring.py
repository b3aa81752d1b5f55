"""The one scoring loop and the one verdict rule, shared by eval, infer, score_dataset, auto-prompts and the RGB + 3D
evaluation: each keeps its own outputs, none loops over samples or decides a verdict itself.

Per sample the loop yields either `Scored` (key, score, anomaly map, verdict, the decoded image, the model's own
latency) or `ScoreFailure` (key and a one-line reason naming the file): one unreadable file never stops a run.
Decoding is timed apart from the model, so `latency_ms` is what the model costs on an inspection PC.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.datasets.splits import resolve_splits
from engine.datasets.types import Sample
from engine.errors import DefectScopeError
from engine.jobs.registry import Progress
from engine.runtime.model_format import Scorer, ScoringInput

NG = "NG"
OK = "OK"


def verdict(score: float, threshold: float) -> str:
    """The verdict rule, everywhere: a score at or above the model's threshold is NG."""
    return NG if score >= threshold else OK


def is_ng(scores: np.ndarray, threshold: float) -> np.ndarray:
    """`verdict` over an array of scores (True = NG), for metrics at the model's threshold."""
    return np.asarray(scores) >= threshold


def select_samples(samples: Sequence[Sample], splits: Sequence[str] | None = None) -> list[Sample]:
    """The samples with their RESOLVED split (the rule `defectscope eval` and training use), keeping those whose
    resolved split, or the split their dataset declares (e.g. "unspecified"), is in `splits` (None: all)."""
    resolved = resolve_splits(list(samples))
    return [r for s, r in zip(samples, resolved, strict=True)
            if splits is None or r.split in splits or s.split in splits]


@dataclass(frozen=True)
class Scored:
    index: int  # position in the samples given
    key: str
    sample: Sample
    score: float
    anomaly_map: np.ndarray
    verdict: str
    image: np.ndarray  # the decoded RGB image (for overlays, masks, prompts)
    latency_ms: float  # the model alone, decoding excluded


@dataclass(frozen=True)
class ScoreFailure:
    index: int
    key: str
    sample: Sample
    error: str


def _default_message(done: int, total: int) -> str:
    return f"scored {done}/{total} images"


def score_samples(
    scorer: Scorer,
    samples: Sequence[Sample],
    key: Callable[[Sample], str] = lambda s: str(s.image_path),
    progress: Progress | None = None,
    message: Callable[[int, int], str] = _default_message,
    every: int = 1,
) -> Iterator[Scored | ScoreFailure]:
    """Score `samples` in order with `scorer`; progress is reported after the caller has handled each result
    (every `every` samples and at the last), so a message may count what the caller made of them."""
    report = progress or (lambda _f, _m: None)
    total = len(samples)
    for i, sample in enumerate(samples):
        k = key(sample)
        try:
            inputs: ScoringInput = scorer.read(sample)
            t0 = time.perf_counter()
            score, amap = scorer.predict(inputs)
            latency = (time.perf_counter() - t0) * 1000.0
        except DefectScopeError as exc:
            yield ScoreFailure(i, k, sample, str(exc))
        else:
            score = float(score)
            yield Scored(i, k, sample, score, amap, verdict(score, scorer.threshold), inputs.image, latency)
        done = i + 1
        if done % every == 0 or done == total:
            report(done / total, message(done, total))
