"""Engine entry point of the train_segmenter job kind."""

from __future__ import annotations

from engine.jobs.kinds_segmenter import TrainSegmenterParams
from engine.jobs.registry import Progress
from trainers.promptseg.data import DataSource
from trainers.promptseg.fit import TrainConfig, train_segmenter


def train_job(params: TrainSegmenterParams, progress: Progress) -> dict:
    cfg = TrainConfig(
        input_size=params.input_size, epochs=params.epochs, time_budget_s=params.time_budget_s,
        holdout_fraction=params.holdout_fraction, device=params.device, seed=params.seed,
        synthetic_images=params.synthetic_images, synthetic_share=params.synthetic_share,
    )
    source = DataSource(params.data, tuple(params.categories) if params.categories else None)
    result = train_segmenter([source], params.out, cfg, progress)
    return {"run_dir": str(result.run_dir), "metadata": result.metadata}
