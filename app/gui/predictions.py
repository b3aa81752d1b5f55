"""Scores and anomaly maps of a predictions folder for the GUI: a thin reader over engine.predictions (no Qt)."""

from __future__ import annotations

from engine.predictions import SCORES_FILE, PredictionItem, Predictions, read_predictions

__all__ = ["SCORES_FILE", "PredictionItem", "Predictions", "read_predictions"]
