"""The built-in anomaly job kinds (train, eval, score a dataset) and their parameters.

Each params model is the single source of its defaults, ranges, choices and rules: the CLI's options
(app/param_options.py) and the dialogs' fields (app/gui/param_form.py) are derived from it. A Field's `title` is the
dialogs' label, its `description` their tooltip and the CLI's help.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device, Split

# The exported memory-bank graph resizes in ONNX to a multiple of the backbone's coarsest stride (64 with the
# scale branches); any other size would train one size and record another.
ANOMALY_SIZE_STEP = 64


class TrainAnomalyParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root (MVTec layout, plain folder, ...)")
    category: str | None = Field(default=None, description="category (sub-folder) to train on")
    out: str = Field(description="run directory the model is written to (model.onnx + model.json)")
    image_size: int = Field(default=256, ge=64, le=2048, multiple_of=ANOMALY_SIZE_STEP,
                            description="longer image side fed to the model, a multiple of 64")
    device: Device = "auto"
    backbone: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = Field(
        default="efficientnet-lite0", description="pretrained feature extractor (larger: slower, finer features)")
    bank_size: int = Field(default=10000, ge=16, le=1_000_000, title="Memory bank size",
                           description="hard cap on memory-bank rows per scale: larger is slower and more precise")
    scales: list[Literal[1, 2, 4]] = Field(default=[1], min_length=1, max_length=3,
                                           description="scale branches as box-downsampling factors, e.g. 1,2")
    resize: Literal["stretch", "area"] = Field(
        default="stretch", description="stretch to a square, or keep the aspect ratio at the same pixel count")


class EvalParams(BaseModel, extra="forbid"):
    model: str = Field(description="exported model directory")
    data: str = Field(description="dataset root")
    category: str | None = Field(default=None, description="category (sub-folder) to evaluate on")
    report: str | None = Field(default=None, description="write the JSON report here")
    device: Device = "auto"
    prompts: str | None = Field(default=None, description="open-set detector: JSON file {class: [phrasings]} of "
                                                          "the classes to search for (default: the trained ones)")


class ScoreDatasetParams(BaseModel, extra="forbid"):
    model: str = Field(description="exported model directory")
    data: str = Field(description="dataset root")
    category: str | None = None
    splits: list[Split] | None = Field(default=None, description="only these splits (default: every image)")
    out: str = Field(description="folder for scores.json and maps/")
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
        model_output="model",
    )
)
register_job_kind(
    JobKind(
        name="eval",
        entry="engine.evaluate:eval_job",
        params=EvalParams,
        description="Evaluate an exported model on a dataset's test split (ONNX Runtime)",
        outputs={"report": "report.json"},
        path_params=("model", "data", "prompts"),
    )
)
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
