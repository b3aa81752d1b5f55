"""The one owner of model folders: their file names, what kind of model a folder holds, and how to open it.

Every model DefectScope writes is a folder identified by one metadata file. `read_model_info` tells which format
a folder holds (`ModelInfo`: task, kind, threshold, score units) and `open_model` returns the scorer of a scoring
model. Formats live in a registry, so a new model kind is one `register_model_format` call (plus its runtime),
never another probe by file name elsewhere. Torch-free: this is the inspection path.

Formats, in the order they are tried:
  unified       model.onnx + model.json with "kind": "anomaly/unified" (one model for many products)
  memory_bank   model.onnx + model.json otherwise (PatchCore-style; older folders carry no "kind")
  multimodal    multimodal.json + its ONNX parts and banks (RGB + 3D)
  segmenter     segmenter.json + encoder.onnx + decoder.onnx (promptable segmenter; not a scorer)
  detector      detector.json + detector.onnx (box detector; engine.runtime.detector_format)
  open_detector open_detector.json + .onnx + class_queries.npy (classes asked for by text or example boxes;
                engine.runtime.open_detector_format)
  external_detector  external_detector.json + the ONNX file it names (a detector exported elsewhere)
  defect_segmentation  defect_segmentation.json + .onnx (per-pixel defect classes learned from masks;
                engine.runtime.defect_segmentation_format)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.datasets.types import Sample
from engine.errors import ModelError
from engine.runtime import defect_segmentation_format, detector_format, open_detector_format, segmenter_format

# The model folders' file names, defined here once (the runtimes and trainers import them from here).
MODEL_FILE = "model.onnx"
MODEL_METADATA_FILE = "model.json"
MULTIMODAL_METADATA_FILE = "multimodal.json"
MULTIMODAL_BANKS_FILE = "banks.npz"
SEGMENTER_METADATA_FILE = segmenter_format.METADATA_FILE

# "segmenter": promptable (a box or clicks in, a mask out); "segmentation": per-pixel defect classes, no prompt.
TASKS = ("anomaly", "segmenter", "detector", "segmentation", "generator")
SCORE_UNITS = {  # what a score means, shown beside it
    "normalised": "0 = a typical good part, 0.5 = the decision threshold",
    "good_std": "standard deviations above held-out good parts (0 = their mean)",
    "confidence": "confidence 0..1 of the most confident finding (a detector's top box, a segmentation model's most "
                  "defect-like pixel)",
    "none": "this model does not score images",
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model folder holds, read from its metadata alone (no ONNX session is created)."""

    folder: Path
    task: str  # one of TASKS
    kind: str  # the format's name: "memory_bank", "unified", "multimodal", "segmenter", ...
    threshold: float | None  # the verdict threshold in score units; None for models that do not score
    score_units: str  # a key of SCORE_UNITS
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def scores_images(self) -> bool:
        return _FORMATS[self.kind].opener is not None


@dataclass(frozen=True)
class ScoringInput:
    """What a scorer reads for one sample; decoding is kept apart from scoring so latency measures the model."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    image_path: Path | None = None
    cloud_path: Path | None = None  # the part's point cloud, for models that use one


class Scorer(Protocol):
    """An opened scoring model: every scoring loop (engine.scoring) drives one of these."""

    info: ModelInfo
    threshold: float
    provider: str
    notes: list[str]  # what the engineer should know about how the scores were made (shown with the results)

    def read(self, sample: Sample) -> ScoringInput: ...

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]: ...

    def score(self, sample: Sample) -> tuple[float, np.ndarray]: ...

    def score_image(self, image: np.ndarray) -> tuple[float, np.ndarray]: ...


class BaseScorer:
    """The shared half of a scorer: `score` and `score_image` in terms of the format's `read` and `predict`."""

    info: ModelInfo
    threshold: float
    provider: str
    notes: list[str]

    def read(self, sample: Sample) -> ScoringInput:
        from engine.datasets.imageio import read_image

        return ScoringInput(read_image(sample.image_path), Path(sample.image_path))

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def score(self, sample: Sample) -> tuple[float, np.ndarray]:
        return self.predict(self.read(sample))

    def score_image(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        return self.predict(ScoringInput(image))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


Opener = Callable[[ModelInfo, str], Scorer]


@dataclass(frozen=True)
class ModelFormat:
    kind: str
    task: str
    metadata_file: str  # the file that identifies the format
    required_files: tuple[str, ...]  # besides metadata_file
    score_units: str
    default_threshold: float | None
    opener: Opener | None  # None: the model does not score images (e.g. a segmenter)
    matches: Callable[[dict], bool] = lambda _meta: True  # told apart by metadata content (same metadata file)
    threshold_key: str = "threshold"  # the metadata key holding the verdict threshold


_FORMATS: dict[str, ModelFormat] = {}


def register_model_format(fmt: ModelFormat) -> ModelFormat:
    """Add a model format; formats are tried in registration order (a more specific one first)."""
    if fmt.task not in TASKS:
        raise ValueError(f"model format {fmt.kind}: task must be one of {', '.join(TASKS)}")
    if fmt.score_units not in SCORE_UNITS:
        raise ValueError(f"model format {fmt.kind}: score units must be one of {', '.join(SCORE_UNITS)}")
    _FORMATS[fmt.kind] = fmt
    return fmt


def model_formats() -> dict[str, ModelFormat]:
    return dict(_FORMATS)


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: model metadata must be a JSON object")
    return meta


def read_model_info(folder: str | Path) -> ModelInfo:
    """The format of a model folder; a ModelError naming the folder (or its bad file) when it is not a model."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelError(f"{root}: model folder does not exist")
    cache: dict[str, dict] = {}
    for fmt in _FORMATS.values():
        meta_path = root / fmt.metadata_file
        if not meta_path.is_file():
            continue
        if fmt.metadata_file not in cache:
            cache[fmt.metadata_file] = _read_metadata(meta_path)
        meta = cache[fmt.metadata_file]
        if not fmt.matches(meta):
            continue
        missing = [name for name in fmt.required_files if not (root / name).is_file()]
        if missing:
            raise ModelError(f"{root}: incomplete {fmt.kind} model ({', '.join(missing)} missing)")
        threshold = None
        if fmt.opener is not None:
            try:
                threshold = float(meta.get(fmt.threshold_key, fmt.default_threshold))
            except (TypeError, ValueError):
                raise ModelError(f"{meta_path}: {fmt.threshold_key} must be a number") from None
        return ModelInfo(root, fmt.task, fmt.kind, threshold, fmt.score_units, meta)
    names = sorted({f.metadata_file for f in _FORMATS.values()})
    raise ModelError(f"{root}: not a DefectScope model folder (none of {', '.join(names)})")


def is_model_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a model of any registered format (never raises)."""
    try:
        read_model_info(folder)
    except (ModelError, OSError):
        return False
    return True


def open_model(folder: str | Path | ModelInfo, device: str = "auto") -> Scorer:
    """The scorer of a scoring model folder; a ModelError naming the folder for anything else."""
    info = folder if isinstance(folder, ModelInfo) else read_model_info(folder)
    opener = _FORMATS[info.kind].opener
    if opener is None:
        raise ModelError(f"{info.folder}: a {info.kind} model does not score images (task: {info.task})")
    return opener(info, device)


# ---------------------------------------------------------------------------------------------- built-in formats
def _open_onnx_anomaly(info: ModelInfo, device: str) -> Scorer:
    from engine.runtime.anomaly import AnomalyScorer

    return AnomalyScorer(info, device)


def _open_multimodal(info: ModelInfo, device: str) -> Scorer:
    from engine.runtime.multimodal import MultimodalScorer

    return MultimodalScorer(info, device)


def _is_unified(meta: dict) -> bool:
    return meta.get("kind") == "anomaly/unified"


register_model_format(ModelFormat("unified", "anomaly", MODEL_METADATA_FILE, (MODEL_FILE,), "normalised", 0.5,
                                  _open_onnx_anomaly, _is_unified))
register_model_format(ModelFormat("memory_bank", "anomaly", MODEL_METADATA_FILE, (MODEL_FILE,), "normalised", 0.5,
                                  _open_onnx_anomaly, lambda meta: not _is_unified(meta)))
# The multimodal parts are opened lazily (only the modalities used); banks.npz is what every mode needs.
register_model_format(ModelFormat("multimodal", "anomaly", MULTIMODAL_METADATA_FILE, (MULTIMODAL_BANKS_FILE,), "good_std",
                                  3.0, _open_multimodal))
register_model_format(ModelFormat("segmenter", "segmenter", SEGMENTER_METADATA_FILE,
                                  (segmenter_format.ENCODER_FILE, segmenter_format.DECODER_FILE), "none", None, None))


def _open_detector(info: ModelInfo, device: str) -> Scorer:
    from engine.runtime.detector import DetectorScorer

    return DetectorScorer(info, device)


# A detector "scores" an image by its most confident box (engine.runtime.detector.DetectorScorer), so the scoring
# loops and the Models panel take it as they are; its verdict threshold is the display threshold "score_threshold".
register_model_format(ModelFormat("detector", "detector", detector_format.METADATA_FILE, (detector_format.MODEL_FILE,),
                                  "confidence", 0.5, _open_detector, threshold_key="score_threshold"))
register_model_format(ModelFormat("open_detector", "detector", open_detector_format.METADATA_FILE,
                                  (open_detector_format.MODEL_FILE, open_detector_format.QUERIES_FILE), "confidence",
                                  0.5, _open_detector, threshold_key="score_threshold"))
# The ONNX file's name is the description's "model" field, so the runtime checks it when it opens the folder.
register_model_format(ModelFormat("external_detector", "detector", detector_format.EXTERNAL_DESCRIPTION_FILE, (),
                                  "confidence", 0.5, _open_detector, threshold_key="score_threshold"))


def _open_defect_segmentation(info: ModelInfo, device: str) -> Scorer:
    from engine.runtime.defect_segmentation import DefectSegmentationScorer

    return DefectSegmentationScorer(info, device)


# Scored by its most defect-like pixel (1 - p(background)) with that probability as the map, so the scoring loops,
# eval / infer and the workbench's heatmaps take it as they are; its per-class labels are the runtime's.
register_model_format(ModelFormat(defect_segmentation_format.KIND, defect_segmentation_format.TASK,
                                  defect_segmentation_format.METADATA_FILE,
                                  (defect_segmentation_format.MODEL_FILE,), "confidence",
                                  defect_segmentation_format.LABEL_THRESHOLD, _open_defect_segmentation,
                                  threshold_key="score_threshold"))
