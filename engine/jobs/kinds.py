"""The built-in job kinds and their parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind

Device = Literal["auto", "cpu", "cuda"]


class TrainAnomalyParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root")
    category: str | None = Field(default=None, description="category (sub-folder) to train on")
    out: str = Field(description="run directory the model is written to")
    image_size: int = Field(default=256, ge=64, le=2048)
    device: Device = "auto"
    backbone: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = "efficientnet-lite0"
    bank_size: int = Field(default=10000, ge=16, le=1_000_000)
    scales: list[Literal[1, 2, 4]] = Field(default=[1], min_length=1, max_length=3,
                                           description="box-downsampling factor of each scale branch")
    resize: Literal["stretch", "area"] = "stretch"


class EvalParams(BaseModel, extra="forbid"):
    model: str
    data: str
    category: str | None = None
    report: str | None = None
    device: Device = "auto"


register_job_kind(
    JobKind(
        name="train_anomaly",
        entry="trainers.patchcore.job:train_job",
        params=TrainAnomalyParams,
        description="Train a memory-bank anomaly model on good images and export it to ONNX",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data",),
    )
)
register_job_kind(
    JobKind(
        name="eval",
        entry="engine.evaluate:eval_job",
        params=EvalParams,
        description="Evaluate an exported model on a dataset's test split (ONNX Runtime)",
        outputs={"report": "report.json"},
        path_params=("model", "data"),
    )
)


class ScoreDatasetParams(BaseModel, extra="forbid"):
    model: str = Field(description="exported model directory")
    data: str = Field(description="dataset root")
    category: str | None = None
    splits: list[Literal["train", "validation", "test", "unspecified"]] | None = Field(
        default=None, description="only these splits (default: every image)")
    out: str = Field(description="folder for scores.json and maps/")
    device: Device = "auto"


register_job_kind(
    JobKind(
        name="score_dataset",
        entry="engine.score_dataset:score_dataset_job",
        params=ScoreDatasetParams,
        description="Score every image of a dataset and keep its anomaly map (what the GUI browses)",
        outputs={"out": "predictions"},
        path_params=("model", "data"),
    )
)

# The other kinds register themselves on import (segmentation, RGB + 3D, unified).
from engine.jobs import kinds_multimodal, kinds_segmentation, kinds_unified  # noqa: E402, F401
