"""Engine entry point of the train_anomaly job kind."""

from __future__ import annotations

from engine.jobs.kinds import TrainAnomalyParams
from engine.jobs.registry import Progress
from trainers.patchcore.fit import TrainConfig, train_anomaly


def train_job(params: TrainAnomalyParams, progress: Progress) -> dict:
    cfg = TrainConfig(
        image_size=params.image_size, device=params.device, backbone=params.backbone, bank_size=params.bank_size,
        resize=params.resize,
        scales=tuple(dict.fromkeys(params.scales)),
    )
    result = train_anomaly(params.data, params.category, params.out, cfg, progress)
    return {"run_dir": str(result.run_dir), "metadata": result.metadata}
