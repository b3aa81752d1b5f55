"""Run an exported anomaly model (model.onnx + model.json) on images: the one inference path.

The GUI, the CLI and the engine all reach `AnomalyModel.predict` (through `AnomalyScorer`, what
engine.runtime.model_format opens for memory-bank and unified folders), which feeds the original image to the ONNX
graph; resizing, normalisation and score normalisation live inside the graph, so a score is the same everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets.imageio import read_image
from engine.errors import ModelError
from engine.runtime.model_format import MODEL_FILE, BaseScorer, ModelInfo, ScoringInput
from engine.runtime.model_format import MODEL_METADATA_FILE as METADATA_FILE
from engine.runtime.session import create_session

__all__ = ["METADATA_FILE", "MODEL_FILE", "AnomalyModel", "AnomalyScorer", "Prediction"]


@dataclass
class Prediction:
    score: float  # normalised: 0 = typical good part, threshold at 0.5 by construction
    anomaly_map: np.ndarray  # H x W float32, same normalisation, original image size
    is_anomalous: bool


class AnomalyModel:
    """A loaded model directory. Thread-safe for concurrent `predict` calls (ORT sessions are)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        onnx_path = self.model_dir / MODEL_FILE
        meta_path = self.model_dir / METADATA_FILE
        if not self.model_dir.is_dir():
            raise ModelError(f"{self.model_dir}: model directory does not exist")
        if not onnx_path.is_file() or not meta_path.is_file():
            raise ModelError(f"{self.model_dir}: not a DefectScope model (needs {MODEL_FILE} and {METADATA_FILE})")
        try:
            self.metadata: dict = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{meta_path}: unreadable model metadata ({exc})") from None
        try:
            self.session, self.provider = create_session(onnx_path, device=device, threads=threads)
        except Exception as exc:
            raise ModelError(f"{onnx_path}: ONNX Runtime cannot load the model ({exc})") from None
        self.threshold = float(self.metadata.get("threshold", 0.5))

    @property
    def category(self) -> str | None:
        return self.metadata.get("category")

    def predict(self, image: np.ndarray, threshold: float | None = None) -> Prediction:
        """image: H x W x 3 uint8 RGB (H x W grayscale is accepted too)."""
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
        score, amap = self.session.run(None, {"image": np.ascontiguousarray(image)})
        t = self.threshold if threshold is None else threshold
        s = float(score[0])
        return Prediction(score=s, anomaly_map=amap, is_anomalous=s >= t)

    def predict_path(self, path: str | Path, threshold: float | None = None) -> Prediction:
        return self.predict(read_image(path), threshold)


class AnomalyScorer(BaseScorer):
    """The scorer of a model.onnx + model.json folder (memory-bank and unified models share the graph's contract)."""

    def __init__(self, info: ModelInfo, device: str = "auto") -> None:
        self.info = info
        self.model = AnomalyModel(info.folder, device=device)
        self.threshold, self.provider = self.model.threshold, self.model.provider
        self.notes: list[str] = []

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        pred = self.model.predict(inputs.image)
        return pred.score, pred.anomaly_map
