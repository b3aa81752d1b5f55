"""The train_unified job kind: one anomaly model for many products, learned product by product (IUF).

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.kinds import Device
from engine.jobs.registry import JobKind, register_job_kind


class TrainUnifiedParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root with one category folder per product")
    categories: list[str] = Field(min_length=1, description="products to learn in this step")
    out: str = Field(description="run folder (model.onnx + model.json, and the state to resume from)")
    resume: str | None = Field(default=None, description="run folder of the previous step (incremental step: "
                                                         "the earlier products' images are not read)")
    image_size: int | None = Field(default=None, ge=64, le=1024, multiple_of=64)  # None: 256 new, saved on resume
    epochs: int = Field(default=50, ge=1, le=10_000)
    lr: float = Field(default=1e-4, gt=0, le=1.0)
    anchor_weight: float = Field(default=1.0, ge=0.0, description="pull towards the previous step (0: naive)")
    compression_weight: float = Field(default=1.0, ge=0.0, description="semantic compression (share of the nuclear "
                                                                      "norm in the small singular values)")
    project: bool = Field(default=True, description="project gradients away from old products' activations")
    seed: int = Field(default=0, ge=0)
    device: Device = "auto"


register_job_kind(
    JobKind(
        name="train_unified",
        entry="trainers.unified.job:train_job",
        params=TrainUnifiedParams,
        description="Train (or extend with new products) one unified anomaly model for many products",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data", "resume"),
    )
)
