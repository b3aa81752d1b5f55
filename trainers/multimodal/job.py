"""Engine entry point of the train_multimodal job kind."""

from __future__ import annotations

from engine.jobs.kinds_multimodal import TrainMultimodalParams
from engine.jobs.registry import Progress
from trainers.multimodal.fit import MultimodalConfig, train_multimodal


def train_job(params: TrainMultimodalParams, progress: Progress) -> dict:
    cfg = MultimodalConfig(image_size=params.image_size, geo_grid=params.geo_grid,
                           distill_epochs=params.distill_epochs, coreset_fraction=params.coreset_fraction,
                           seed=params.seed)
    out = train_multimodal(params.data, params.category, params.out, cfg, progress)
    return {"run_dir": str(out)}
