"""Run a box detector on images: the one torch-free inference path for DefectScope's own detectors and for ones
brought from elsewhere (engine.runtime.detector_format describes both folders).

`Detector(folder).detect(image)` returns boxes in pixels of the original image, their scores and class indices.
A detector's graph resizes the whole image to its input size, so an image much larger than that input is also run
tile by tile at native scale and the passes are merged (engine.runtime.tiling): a 20-px defect on a 6000 x 4500
image is found. `DetectorScorer` makes a detector a scorer of the model-format registry too: an image's score is
its most confident box and its map the boxes filled with their scores, so score_dataset and the scoring loops run
detectors unchanged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import ModelError
from engine.runtime import detector_format as fmt
from engine.runtime.model_format import BaseScorer, ModelInfo, ScoringInput, model_formats, read_model_info
from engine.runtime.session import create_session
from engine.runtime.tiling import merge_detections, tile_windows

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [N, 4] float32, scores [N] float32, classes [N] int64
TILE_ABOVE = 2.0  # images whose long side exceeds this many input sizes are also run tile by tile
# Each pass runs on one ORT thread and a tiled image's passes run side by side: a detector graph is small enough
# that ORT's intra-op threads barely help one pass (14.4 ms on 1 or 2 threads, 2-core EPYC), while two passes at
# once nearly double the throughput (10 passes of a 640-px image: 138 -> 78 ms; benchmarks/RESULTS.md).
PASS_THREADS = 1
_pass_pool: ThreadPoolExecutor | None = None
_pass_pool_lock = threading.Lock()


def _passes() -> ThreadPoolExecutor:
    """The process's pool for the passes of tiled images (one worker per core), made on first use."""
    global _pass_pool
    with _pass_pool_lock:
        if _pass_pool is None:
            _pass_pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                            thread_name_prefix="detector-pass")
        return _pass_pool


class DetectorGraph(Protocol):
    """One ONNX detector behind the common outputs: boxes in original pixels, scores, class indices."""

    provider: str

    def run(self, image: np.ndarray) -> Detections: ...


@dataclass(frozen=True)
class DetectorSettings:
    classes: list[str]
    input_size: int  # the long side the graph sees; also the tile size
    min_score: float
    nms_iou: float
    max_detections: int
    score_threshold: float


def read_settings(info: ModelInfo, source: Path) -> DetectorSettings:
    """The settings every detector folder states, each checked with the file and field named."""
    meta = info.metadata
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ModelError(f"{source}: classes must be a non-empty list of class names")

    def number(key: str, default: float | None, kind: type = float, lo: float = 0.0, hi: float | None = None) -> Any:
        value = meta.get(key, default)
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise ModelError(f"{source}: {key} must be a number (got {value!r})") from None
        if value < lo or (hi is not None and value > hi):
            raise ModelError(f"{source}: {key} must be in [{lo:g}, {'inf' if hi is None else f'{hi:g}'}] "
                             f"(got {value})")
        return value

    return DetectorSettings(
        classes=list(classes),
        input_size=number("input_size", _input_size_default(meta), int, 1),
        min_score=number("min_score", fmt.DEFAULT_MIN_SCORE, float, 0.0, 1.0),
        nms_iou=number("nms_iou", fmt.DEFAULT_NMS_IOU, float, 0.0, 1.0),
        max_detections=number("max_detections", fmt.DEFAULT_MAX_DETECTIONS, int, 1),
        score_threshold=number("score_threshold", info.threshold if info.threshold is not None else 0.5,
                               float, 0.0, 1.0),
    )


def _input_size_default(meta: dict) -> Any:
    size = (meta.get("input") or {}).get("size") if isinstance(meta.get("input"), dict) else None
    if isinstance(size, list) and size:
        return max(size)
    return size


class OwnGraph:
    """A DefectScope detector.onnx: pre-processing and NMS are inside the graph (detector_format's interface)."""

    def __init__(self, info: ModelInfo, settings: DetectorSettings, device: str) -> None:
        path = info.folder / fmt.MODEL_FILE
        try:
            self.session, self.provider = create_session(path, device, threads=PASS_THREADS)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the detector ({exc})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [fmt.INPUT_NAME] or not set(fmt.OUTPUT_NAMES) <= set(outputs):
            raise ModelError(f"{path}: not a DefectScope detector graph (inputs {inputs}, outputs {outputs}; "
                             f"expected input '{fmt.INPUT_NAME}' and outputs {', '.join(fmt.OUTPUT_NAMES)})")

    def run(self, image: np.ndarray) -> Detections:
        boxes, scores, classes = self.session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: image})
        return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                np.asarray(classes, np.int64).reshape(-1))


def _open_own(info: ModelInfo, settings: DetectorSettings, device: str) -> DetectorGraph:
    return OwnGraph(info, settings, device)


def _open_external(info: ModelInfo, settings: DetectorSettings, device: str) -> DetectorGraph:
    from engine.runtime.external_detector import ExternalGraph

    return ExternalGraph(info, settings, device)


def _open_open_set(info: ModelInfo, settings: DetectorSettings, device: str) -> DetectorGraph:
    from engine.runtime.open_detector import OpenGraph, trained_queries

    return OpenGraph(info, settings, device).bind(trained_queries(info))


# model-format kind -> how its graph is opened (the kinds are registered in engine.runtime.model_format)
GRAPHS: dict[str, Callable[[ModelInfo, DetectorSettings, str], DetectorGraph]] = {
    "detector": _open_own,
    "external_detector": _open_external,
    "open_detector": _open_open_set,  # asking for the trained classes; OpenDetector.ask for others
}


class Detector:
    """An opened detector folder. `detect` is safe to call from several threads (ORT sessions are)."""

    def __init__(self, folder: str | Path | ModelInfo, device: str = "auto") -> None:
        info = folder if isinstance(folder, ModelInfo) else read_model_info(folder)
        if info.kind not in GRAPHS:
            raise ModelError(f"{info.folder}: a {info.kind} model is not a detector (task: {info.task})")
        self.info = info
        source = info.folder / model_formats()[info.kind].metadata_file
        self.settings = read_settings(info, source)
        self.graph = GRAPHS[info.kind](info, self.settings, device)
        self.provider = self.graph.provider
        self.notes: list[str] = []  # what the engineer should know about how the boxes were found

    @property
    def classes(self) -> list[str]:
        return self.settings.classes

    @property
    def score_threshold(self) -> float:
        return self.settings.score_threshold

    def needs_tiles(self, height: int, width: int) -> bool:
        return max(height, width) > TILE_ABOVE * self.settings.input_size

    def detect(self, image: np.ndarray) -> Detections:
        """Boxes (x0, y0, x1, y1 in original pixels), scores (descending, >= min_score) and class indices."""
        image = _rgb8(image)
        h, w = image.shape[:2]
        s = self.settings
        if not self.needs_tiles(h, w):
            passes = [self.graph.run(image)]
        else:
            note = (f"images larger than {TILE_ABOVE:g} x the input size ({s.input_size} px) are also searched "
                    "tile by tile at full resolution")
            if note not in self.notes:
                self.notes.append(note)
            windows = [(0, 0, w, h), *tile_windows(h, w, s.input_size)]  # the whole image, then its tiles
            crops = [image, *(np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows[1:])]
            passes = [(boxes + np.array([x0, y0, x0, y0], np.float32), scores, classes)
                      for (x0, y0, _, _), (boxes, scores, classes)
                      in zip(windows, _passes().map(self.graph.run, crops), strict=True)]
        boxes = np.concatenate([p[0] for p in passes]).reshape(-1, 4)
        scores = np.concatenate([p[1] for p in passes])
        classes = np.concatenate([p[2] for p in passes])
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
        keep = (scores >= s.min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep &= (classes >= 0) & (classes < len(s.classes))
        return merge_detections(boxes[keep], scores[keep], classes[keep], s.nms_iou, s.max_detections)


def _rgb8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def box_map(shape: tuple[int, int], boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """H x W float32: each pixel the score of the most confident box covering it (0 elsewhere)."""
    out = np.zeros(shape, np.float32)
    for (x0, y0, x1, y1), score in sorted(zip(boxes.tolist(), scores.tolist(), strict=True), key=lambda t: t[1]):
        out[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = score
    return out


class DetectorScorer(BaseScorer):
    """A detector in the scoring loops: score = the most confident box (0 without one), map = box_map."""

    def __init__(self, info: ModelInfo, device: str = "auto") -> None:
        self.detector = Detector(info, device)
        self.info = info
        self.threshold = self.detector.score_threshold
        self.provider = self.detector.provider
        self.notes = self.detector.notes

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        boxes, scores, _ = self.detector.detect(inputs.image)
        score = float(scores.max()) if len(scores) else 0.0
        return score, box_map(inputs.image.shape[:2], boxes, scores)
