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
    return train_unified(params.data, params.categories, params.out, params.resume,
                         # None: the config's default for a new model (H5 makes a resume use the saved size)
                         UnifiedConfig() if params.image_size is None else UnifiedConfig(image_size=params.image_size),
                         step, progress)
