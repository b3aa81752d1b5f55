"""The AGSSP pretraining job kind: pretrain_backbone (the detector's trunk learns from an unlabelled pool's
anomaly maps, trainers.agssp.backbone). Detector pretraining on the pool's pseudo boxes is train_detector on the
pseudo_boxes job's COCO set with --freeze-trunk; then train_detector --init on the real labels.

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device


class PretrainBackboneParams(BaseModel, extra="forbid"):
    pool: str = Field(description="pseudo_boxes run folder (or job reference): the pool's images and anomaly maps")
    out: str = Field(description="folder for the pretrained trunk (give it to train detector as --init)")
    backbone: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = Field(
        default="efficientnet-lite0", description="trunk to pretrain (the detector trained from it must match)")
    image_size: int = Field(default=256, ge=128, le=1280, multiple_of=32,
                            description="longest image side at the model input, a multiple of 32")
    epochs: int = Field(default=2, ge=1, le=1000, description="passes over the pool")
    batch_size: int = Field(default=16, ge=2, le=512, description="images per training step")
    lr: float = Field(default=1e-4, gt=0, le=1.0, title="Learning rate",
                      description="step size (small: the trunk starts from ImageNet weights)")
    distill_weight: float = Field(default=1.0, ge=0, le=100,
                                  description="weight of the term that keeps features close to the ImageNet "
                                              "trunk's (0: energy matching alone, which can collapse)")
    seed: int = Field(default=0, ge=0, description="random seed")
    device: Device = "auto"
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                        description="stop after this many seconds")


register_job_kind(
    JobKind(
        name="pretrain_backbone",
        entry="trainers.agssp.backbone_job:pretrain_job",
        params=PretrainBackboneParams,
        description="Anomaly-guided backbone pretraining: the detector's trunk learns from an unlabelled pool's "
                    "anomaly maps (AGSSP)",
        needs_torch=True,
        outputs={"out": "backbone"},
        path_params=("pool",),
    )
)
