"""Engine entry point of the train_unified job kind."""

from __future__ import annotations

from engine.jobs.kinds_unified import TrainUnifiedParams
from engine.jobs.registry import Progress
from trainers.unified.fit import StepConfig, train_unified
from trainers.unified.model import UnifiedConfig


def train_job(params: TrainUnifiedParams, progress: Progress) -> dict:
    step = StepConfig(epochs=params.epochs, lr=params.lr, anchor_weight=params.anchor_weight,
                      compression_weight=params.compression_weight, project=params.project, seed=params.seed,
                      device=params.device)
    # No image_size: 256 for a new model, the saved size on resume (train_unified refuses a different one).
    cfg = None if params.image_size is None else UnifiedConfig(image_size=params.image_size)
    return train_unified(params.data, params.categories, params.out, params.resume, cfg, step, progress)
