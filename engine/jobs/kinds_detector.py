"""The detector job kinds: train_detector (DefectScope's own box detector, trainers.detector, closed set),
train_open_detector (open set: classes asked for by text or example boxes at inference time,
trainers.detector.open_fit) and detect_dataset (any detector over a whole dataset, engine.detection_dataset).

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device

INIT_IMAGENET = "imagenet"


class TrainDetectorParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root with boxes (COCO, VOC, YOLO, labelme) or MVTec-layout masks")
    out: str = Field(description="detector folder the model is written to (detector.onnx + detector.json)")
    classes: list[str] | None = Field(default=None, min_length=1,
                                      description="classes to learn, e.g. crazing,scratches (default: all)")
    epochs: int = Field(default=60, ge=1, le=10_000,
                        description="passes over the training images (each through a cached augmented view)")
    image_size: int = Field(default=256, ge=128, le=1280, multiple_of=32,
                            description="longest image side at the model input, a multiple of 32")
    backbone: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = Field(
        default="efficientnet-lite0", description="pretrained trunk (larger: slower, finer features)")
    device: Device = "auto"
    # None is the ImageNet trunk; "imagenet" is accepted as its name (and turned into None before the engine
    # checks path parameters, so it is never mistaken for a folder).
    init: str | None = Field(default=None, description="'imagenet' (default), or a detector run folder or job "
                                                       "reference to fine-tune from")
    seed: int = Field(default=0, ge=0, description="random seed (same seed, same model)")
    label_fraction: float = Field(default=1.0, gt=0, le=1.0,
                                  description="share of the labelled training images used, drawn per class by "
                                              "the seed (few-label protocols: 0.1 = 10%)")
    freeze_trunk: bool = Field(default=False,
                               description="keep the whole trunk frozen (detector pretraining on pseudo boxes: only "
                                           "the FPN and head learn)")
    batch_size: int = Field(default=16, ge=1, le=512, description="images per training step")
    lr: float = Field(default=2e-3, gt=0, le=1.0, title="Learning rate", description="step size of the optimizer")
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                        description="stop the training loop after this many seconds")

    @field_validator("init", mode="before")
    @classmethod
    def _imagenet_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in (INIT_IMAGENET, "") else value


register_job_kind(
    JobKind(
        name="train_detector",
        entry="trainers.detector.job:train_job",
        params=TrainDetectorParams,
        description="Train DefectScope's box detector (one-stage, anchor-free) and export it in the detector "
                    "format",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data", "init"),
        model_output="model",
    )
)


class TrainOpenDetectorParams(TrainDetectorParams):
    out: str = Field(description="folder the open-set detector is written to (open_detector.onnx, "
                                 "open_detector.json and the text encoder it bundles)")
    classes: list[str] | None = Field(default=None, min_length=1,
                                      description="the known classes to learn, e.g. crazing,scratches (default: "
                                                  "all); images showing any other class are left out of training")
    prompts: str | None = Field(default=None, description="JSON file {class: [phrasings]}: how each class is "
                                                          "described (default: its name)")
    text_encoder: str | None = Field(default=None, description="an exported text encoder folder to bundle "
                                                               "(default: export the pip-shipped all-MiniLM-L6-v2)")


register_job_kind(
    JobKind(
        name="train_open_detector",
        entry="trainers.detector.open_fit:train_open_job",
        params=TrainOpenDetectorParams,
        description="Train DefectScope's open-set box detector: region embeddings scored against text or example "
                    "boxes, so classes can be asked for by name at inference time",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data", "init", "prompts", "text_encoder"),
        model_output="model",
    )
)


class DetectDatasetParams(BaseModel, extra="forbid"):
    model: str = Field(description="detector folder (DefectScope's or one brought from elsewhere) or job reference")
    data: str = Field(description="dataset root whose every image is searched")
    category: str | None = Field(default=None, description="category (sub-folder) to search")
    out: str = Field(description="folder for detections.json")
    device: Device = "auto"
    prompts: str | None = Field(default=None, description="open-set detector: JSON file {class: [phrasings]} of "
                                                          "the classes to search for (default: the trained ones)")


register_job_kind(
    JobKind(
        name="detect_dataset",
        entry="engine.detection_dataset:detect_job",
        params=DetectDatasetParams,
        description="Run a detector over every image of a dataset, with each image's labelled boxes alongside "
                    "(what the workbench draws as hits, false alarms and misses)",
        outputs={"out": "detections"},
        path_params=("model", "data", "prompts"),
    )
)
