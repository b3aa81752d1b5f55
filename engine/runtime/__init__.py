"""ONNX inference runtime (never imports torch: inspection PCs may run without it)."""

from engine.runtime.anomaly import AnomalyModel, Prediction
from engine.runtime.session import create_session

__all__ = ["AnomalyModel", "Prediction", "create_session"]
