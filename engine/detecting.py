"""The one detection loop, shared by detector evaluation and detector inference: per image it yields `Detected`
(boxes, scores, classes, the decoded image, the model's own latency) or `DetectFailure` (a one-line reason naming the
file); one unreadable file never stops a run. Decoding is timed apart from the model, as in engine.scoring."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.jobs.registry import Progress
from engine.runtime.detector import Detector


@dataclass(frozen=True)
class Detected:
    index: int
    path: Path
    boxes: np.ndarray  # [N, 4] x0, y0, x1, y1 in original pixels
    scores: np.ndarray  # [N], descending
    classes: np.ndarray  # [N] indices into the detector's classes
    image: np.ndarray  # the decoded RGB image
    latency_ms: float  # the model alone, decoding excluded


@dataclass(frozen=True)
class DetectFailure:
    index: int
    path: Path
    error: str


def detect_images(
    detector: Detector,
    paths: Sequence[Path],
    progress: Progress | None = None,
    message: Callable[[int, int], str] = lambda d, t: f"detected in {d}/{t} images",
) -> Iterator[Detected | DetectFailure]:
    """Run `detector` on each image in order; progress after the caller has handled each result."""
    report = progress or (lambda _f, _m: None)
    total = len(paths)
    for i, path in enumerate(paths):
        try:
            image = read_image(path)
            t0 = time.perf_counter()
            boxes, scores, classes = detector.detect(image)
            latency = (time.perf_counter() - t0) * 1000.0
        except DefectScopeError as exc:
            yield DetectFailure(i, Path(path), str(exc))
        else:
            yield Detected(i, Path(path), boxes, scores, classes, image, latency)
        report((i + 1) / total, message(i + 1, total))
