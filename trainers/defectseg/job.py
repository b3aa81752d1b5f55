"""Engine entry point of the train_segmentation job kind."""

from __future__ import annotations

from engine.datasets.segmentation import load_extra_samples, load_segmentation_split
from engine.jobs.kinds_defect_segmentation import TrainSegmentationParams
from engine.jobs.registry import Progress
from trainers.defectseg.fit import FitConfig, train_segmentation


def train_job(params: TrainSegmentationParams, progress: Progress) -> dict:
    split = load_segmentation_split(params.data, category=params.category, classes=params.classes,
                                    shots_per_type=params.shots_per_type, shots_seed=params.shots_seed,
                                    good_images=params.good_images)
    extra, extra_summary = load_extra_samples(params.extra or [], split.classes)
    cfg = FitConfig(steps=params.steps, image_size=params.image_size, backbone=params.backbone,
                    batch_size=params.batch_size, lr=params.lr, device=params.device, seed=params.seed,
                    time_budget_s=params.time_budget_s)
    draw = {"shots_per_type": params.shots_per_type, "shots_seed": params.shots_seed,
            "good_images": params.good_images, "category": params.category}
    return train_segmentation(split, params.out, cfg, extra, extra_summary, draw, progress)
