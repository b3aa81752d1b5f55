"""ONNX inference runtime (never imports torch: inspection PCs may run without it)."""

from engine.runtime.anomaly import AnomalyModel, Prediction
from engine.runtime.model_format import ModelInfo, is_model_folder, open_model, read_model_info
from engine.runtime.session import create_session

__all__ = ["AnomalyModel", "ModelInfo", "Prediction", "create_session", "is_model_folder", "open_model",
           "read_model_info"]
