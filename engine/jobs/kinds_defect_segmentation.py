"""The train_segmentation job kind: DefectScope's supervised defect segmentation model (trainers.defectseg), one
class per defect type, learned from pixel masks (real ones, and extra folders such as synthetic defects).

Which images train and which are held out is engine.datasets.segmentation's rule. Kept torch-free: the entry point
is imported only when a job runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device


class TrainSegmentationParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root with defect masks (MVTec layout: ground_truth/<defect type>/)")
    out: str = Field(description="folder the model is written to (defect_segmentation.onnx + "
                                 "defect_segmentation.json)")
    category: str | None = Field(default=None, description="category (sub-folder) of a dataset with several")
    classes: list[str] | None = Field(default=None, min_length=1,
                                      description="defect types to learn, e.g. crack,blowhole (default: every type "
                                                  "with masks)")
    extra: list[str] | None = Field(default=None, min_length=1,
                                    description="dataset folders of extra (image, mask) samples, e.g. synthetic "
                                                "defects, added to training as they are (their defect types must be "
                                                "among the classes); never held out")
    shots_per_type: int | None = Field(default=None, ge=1, le=100_000,
                                       description="real defective images per defect type to train on, drawn by "
                                                   "shots_seed; the rest are held out (default: the dataset's "
                                                   "training split, or half of each type when its defects are all "
                                                   "in test/)")
    shots_seed: int = Field(default=0, ge=0, description="seed of the draw of the real training images (apart from "
                                                         "seed, so draws and training seeds vary separately)")
    good_images: int = Field(default=10, ge=0, le=1_000_000,
                             description="good images (all background) from the training split, drawn by shots_seed")
    steps: int = Field(default=600, ge=1, le=1_000_000,
                       description="optimisation steps, whatever the number of images: fewer images are oversampled "
                                   "(cycled through their augmented views) to fill them")
    batch_size: int = Field(default=8, ge=1, le=512, description="images per training step")
    image_size: int = Field(default=256, ge=128, le=1280, multiple_of=32,
                            description="longest image side at the model input, a multiple of 32")
    backbone: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = Field(
        default="efficientnet-lite0", description="pretrained trunk (larger: slower, finer features)")
    lr: float = Field(default=4e-3, gt=0, le=1.0, title="Learning rate", description="step size of the optimizer")
    device: Device = "auto"
    seed: int = Field(default=0, ge=0, description="random seed of training (same seed and draw, same model)")
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                        description="stop the training loop after this many seconds")


register_job_kind(
    JobKind(
        name="train_segmentation",
        entry="trainers.defectseg.job:train_job",
        params=TrainSegmentationParams,
        description="Train DefectScope's defect segmentation model (one class per defect type, from masks) and "
                    "export it with its pre- and post-processing in one ONNX graph",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data", "extra"),
        model_output="model",
    )
)
