"""Engine entry point of the train_detector job kind."""

from __future__ import annotations

from engine.jobs.kinds_detector import TrainDetectorParams
from engine.jobs.registry import Progress
from trainers.detector.fit import FitConfig, train_detector


def train_job(params: TrainDetectorParams, progress: Progress) -> dict:
    from engine.datasets.detection import load_detection_set  # the data side's owner (issue 15, package D2)

    dataset = load_detection_set(params.data, classes=params.classes)
    cfg = FitConfig(epochs=params.epochs, image_size=params.image_size, backbone=params.backbone,
                    batch_size=params.batch_size, lr=params.lr, device=params.device, init=params.init,
                    seed=params.seed, time_budget_s=params.time_budget_s, label_fraction=params.label_fraction,
                    freeze_trunk=params.freeze_trunk)
    return train_detector(dataset, params.out, cfg, progress)
