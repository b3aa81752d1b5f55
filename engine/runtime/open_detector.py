"""Run an open-set detector (engine.runtime.open_detector_format) without torch: classes asked for by text or by
example boxes.

`OpenDetector(folder)` is a Detector of the trained classes (so eval, infer, Detect and the scoring loops take it
as any detector); `ask(queries)` returns the same detector asking for other classes: `text_queries` turns typed
phrasings into queries with the bundled sentence encoder, `prototype_queries` turns boxes drawn on images into
visual prototypes (the mean region embedding of the locations whose predicted box matches the drawn one). Both kinds
of query can be mixed in one call, so the classes compete for each region.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.errors import ModelError
from engine.metrics.detection_match import box_iou
from engine.runtime import open_detector_format as fmt
from engine.runtime.detector import PASS_THREADS, Detections, Detector, DetectorSettings, _rgb8
from engine.runtime.model_format import ModelInfo
from engine.runtime.session import create_session

PROTOTYPE_IOU = 0.5  # a location belongs to a drawn box when its predicted box overlaps it this much
PROTOTYPE_FALLBACK = 3  # else the locations whose boxes overlap it most


@dataclass(frozen=True)
class Queries:
    """The classes one call asks for: names, L2-normalised vectors [C, D], calibration (scale, bias) [C, 2] and
    where each came from ("text" or "prototype")."""

    names: list[str]
    vectors: np.ndarray
    calibration: np.ndarray
    sources: list[str]

    def __post_init__(self) -> None:
        n = len(self.names)
        if not n:
            raise ValueError("no classes asked for")
        if len(set(self.names)) != n:
            raise ValueError(f"class names asked for twice: {self.names}")
        if self.vectors.shape[0] != n or self.calibration.shape != (n, 2) or len(self.sources) != n:
            raise ValueError(f"{n} names, {self.vectors.shape[0]} query vectors, calibration "
                             f"{self.calibration.shape}, {len(self.sources)} sources")

    def __add__(self, other: Queries) -> Queries:
        return Queries([*self.names, *other.names], np.concatenate([self.vectors, other.vectors]),
                       np.concatenate([self.calibration, other.calibration]), [*self.sources, *other.sources])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def region_labels(region_boxes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[L] bool: locations whose predicted box overlaps one of `boxes` by IoU >= PROTOTYPE_IOU."""
    if not len(boxes):
        return np.zeros(len(region_boxes), bool)
    return (box_iou(np.asarray(region_boxes, np.float32), np.asarray(boxes, np.float32).reshape(-1, 4))
            >= PROTOTYPE_IOU).any(1)


def prototype(region_boxes: np.ndarray, region_embeddings: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
    """The visual prototype of drawn boxes (one image's regions): per box, the mean embedding of the locations
    that belong to it (PROTOTYPE_IOU, else the PROTOTYPE_FALLBACK best overlapping); then their normalised mean."""
    parts = []
    for box in boxes:
        iou = box_iou(np.asarray(region_boxes, np.float32), np.asarray(box, np.float32).reshape(1, 4))[:, 0]
        members = np.flatnonzero(iou >= PROTOTYPE_IOU)
        if not len(members):
            members = np.argsort(-iou)[:PROTOTYPE_FALLBACK]
        parts.append(_unit(region_embeddings[members].mean(0)))
    if not parts:
        raise ValueError("no example box")
    return _unit(np.mean(parts, 0))


class OpenGraph:
    """open_detector.onnx with a query set bound: the DetectorGraph interface the tiling runtime calls."""

    def __init__(self, info: ModelInfo, settings: DetectorSettings, device: str) -> None:
        path = info.folder / fmt.MODEL_FILE
        try:
            self.session, self.provider = create_session(path, device, threads=PASS_THREADS)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the open-set detector ({exc})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != list(fmt.INPUT_NAMES) or not set(fmt.OUTPUT_NAMES + fmt.REGION_OUTPUTS) <= outputs:
            raise ModelError(f"{path}: not a DefectScope open-set detector graph (inputs {inputs}; expected "
                             f"{', '.join(fmt.INPUT_NAMES)})")
        self.dim = int(self.session.get_inputs()[1].shape[1])
        self.feeds: dict[str, np.ndarray] = {}

    def bind(self, queries: Queries) -> OpenGraph:
        if queries.vectors.ndim != 2 or queries.vectors.shape[1] != self.dim:
            raise ModelError(f"query vectors of shape {queries.vectors.shape}; this detector takes [C, {self.dim}]")
        bound = copy.copy(self)
        bound.feeds = {fmt.QUERY_INPUT: _unit(queries.vectors),
                       fmt.CALIBRATION_INPUT: np.asarray(queries.calibration, np.float32)}
        return bound

    def run(self, image: np.ndarray) -> Detections:
        boxes, scores, classes = self.session.run(list(fmt.OUTPUT_NAMES), {fmt.IMAGE_INPUT: image, **self.feeds})
        return (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                np.asarray(classes, np.int64).reshape(-1))

    def regions(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, emb = self.session.run(list(fmt.REGION_OUTPUTS), {fmt.IMAGE_INPUT: image, **self.feeds})
        return np.asarray(boxes, np.float32), np.asarray(emb, np.float32)


def _calibration(meta: dict, key: str, source: Path) -> np.ndarray:
    value = meta.get(key)
    try:
        cal = np.asarray(value, np.float32).reshape(2)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: {key} must be [scale, bias] (got {value!r})") from None
    if not np.isfinite(cal).all():
        raise ModelError(f"{source}: {key} must be finite numbers (got {value!r})")
    return cal


def trained_queries(info: ModelInfo) -> Queries:
    """The trained classes' queries stored with the model (class_queries.npy), with the text calibration."""
    source = info.folder / fmt.METADATA_FILE
    path = info.folder / fmt.QUERIES_FILE
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable query vectors ({exc})") from None
    classes = list(info.metadata.get("classes") or [])
    if vectors.ndim != 2 or vectors.shape[0] != len(classes):
        raise ModelError(f"{path}: {vectors.shape} query vectors for {len(classes)} classes in {source.name}")
    cal = _calibration(info.metadata, "text_calibration", source)
    return Queries(classes, _unit(vectors), np.tile(cal, (len(classes), 1)), ["text"] * len(classes))


class OpenDetector(Detector):
    """An opened open-set detector folder; `ask` returns it asking for other classes (same session)."""

    graph: OpenGraph

    def __init__(self, folder: str | Path | ModelInfo, device: str = "auto") -> None:
        super().__init__(folder, device)
        if self.info.kind != "open_detector":
            raise ModelError(f"{self.info.folder}: a {self.info.kind} model has a fixed class list; text and "
                             "example-box queries need an open-set detector (defectscope train open-detector)")
        source = self.info.folder / fmt.METADATA_FILE
        self.text_calibration = _calibration(self.info.metadata, "text_calibration", source)
        self.prototype_calibration = _calibration(self.info.metadata, "prototype_calibration", source)
        self.queries = trained_queries(self.info)
        self._encoder = None

    @property
    def prompts(self) -> dict[str, list[str]]:
        """The phrasings the trained classes learnt with."""
        return {k: list(v) for k, v in (self.info.metadata.get("prompts") or {}).items()}

    def ask(self, queries: Queries) -> OpenDetector:
        asked = copy.copy(self)
        asked.graph = self.graph.bind(queries)
        asked.settings = replace(self.settings, classes=list(queries.names))
        asked.queries = queries
        asked.notes = self.notes
        return asked

    def text_encoder(self):  # -> engine.runtime.text.TextEncoder
        if self._encoder is None:
            from engine.runtime.text import TextEncoder

            self._encoder = TextEncoder(self.info.folder / fmt.TEXT_ENCODER_DIR)
        return self._encoder

    def text_queries(self, prompts: dict[str, Sequence[str]]) -> Queries:
        """One query per class: the normalised mean embedding of its phrasings."""
        names, vectors = [], []
        for name, phrasings in prompts.items():
            texts = [t.strip() for t in phrasings if t and t.strip()]
            if not texts:
                raise ValueError(f"class {name!r}: no phrasing to search for")
            vectors.append(_unit(self.text_encoder().embed(texts).mean(0)))
            names.append(name)
        return Queries(names, np.stack(vectors), np.tile(self.text_calibration, (len(names), 1)),
                       ["text"] * len(names))

    def regions(self, image: np.ndarray, around: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every location's box (original pixels) and embedding. An image the detector tiles is cut to a window
        of the input size (or the box, if larger) around `around`, so a small example is seen at native scale."""
        image = _rgb8(image)
        h, w = image.shape[:2]
        if around is None or not self.needs_tiles(h, w):
            return self.graph.regions(image)
        x0, y0, x1, y1 = np.asarray(around, np.float32)
        side = int(max(self.settings.input_size, x1 - x0, y1 - y0) * 1.25)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        wx0 = int(np.clip(cx - side / 2, 0, max(w - side, 0)))
        wy0 = int(np.clip(cy - side / 2, 0, max(h - side, 0)))
        crop = np.ascontiguousarray(image[wy0:wy0 + side, wx0:wx0 + side])
        boxes, emb = self.graph.regions(crop)
        return boxes + np.array([wx0, wy0, wx0, wy0], np.float32), emb

    def prototype_queries(self, examples: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]]) -> Queries:
        """One query per class from its example boxes: {name: [(image, box x0 y0 x1 y1), ...]}."""
        names, vectors = [], []
        for name, shots in examples.items():
            if not shots:
                raise ValueError(f"class {name!r}: no example box")
            parts = []
            for image, box in shots:
                boxes, emb = self.regions(image, np.asarray(box, np.float32))
                parts.append(prototype(boxes, emb, [np.asarray(box, np.float32)]))
            vectors.append(_unit(np.mean(parts, 0)))
            names.append(name)
        return Queries(names, np.stack(vectors), np.tile(self.prototype_calibration, (len(names), 1)),
                       ["prototype"] * len(names))

    def name_regions(self, image: np.ndarray, boxes: Sequence[np.ndarray], queries: Queries
                     ) -> list[tuple[str, float]]:
        """Class-agnostic regions (e.g. an anomaly map's blobs, engine.auto_prompts) named by the text head: per
        box, the query its prototype resembles most and that query's calibrated probability."""
        named = []
        for box in boxes:
            region_boxes, emb = self.regions(image, np.asarray(box, np.float32))
            vector = prototype(region_boxes, emb, [np.asarray(box, np.float32)])
            logits = queries.calibration[:, 0] * (queries.vectors @ vector) + queries.calibration[:, 1]
            best = int(np.argmax(logits))
            named.append((queries.names[best], float(1.0 / (1.0 + np.exp(-logits[best])))))
        return named


def detector_for(model: str | Path | ModelInfo, device: str = "auto",
                 prompts: str | Path | dict[str, Sequence[str]] | None = None) -> Detector:
    """The detector a job runs: the model's own classes, or (prompts: a prompts file or {class: [phrasings]}) an
    open-set detector asking for the classes the prompts name."""
    if prompts is None:
        return Detector(model, device)
    if not isinstance(prompts, dict):
        from engine.class_prompts import read_prompts

        prompts = read_prompts(prompts)
    if not prompts:
        raise ModelError("prompts: no class to search for")
    detector = OpenDetector(model, device)
    try:
        return detector.ask(detector.text_queries(prompts))
    except ValueError as exc:
        raise ModelError(f"prompts: {exc}") from None
