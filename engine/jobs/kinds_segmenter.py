"""The train_segmenter job kind: DefectScope's own promptable defect segmenter (trainers.promptseg).

Registered through engine.jobs.catalog; kept torch-free (the entry point is imported only when a job runs).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device


class TrainSegmenterParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root; its defective images need pixel masks (or polygons)")
    categories: list[str] | None = Field(default=None, min_length=1,
                                         description="categories (sub-folders) to train on; default: all")
    out: str = Field(description="segmenter folder the model is written to (encoder.onnx, decoder.onnx, "
                                 "segmenter.json)")
    # A multiple of the encoder's coarsest stride; declared as a constraint so the engine's schema states it.
    input_size: int = Field(default=512, ge=128, le=1024, multiple_of=32,
                            description="longest image side at the encoder input, a multiple of 32")
    epochs: int = Field(default=40, ge=1, le=10_000, description="passes over the training defects (at most)")
    time_budget_s: float | None = Field(default=900.0, gt=0, le=7 * 24 * 3600,
                                        description="stop the training loop after this many seconds")
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0,
                                    description="defective images held out per defect type to measure IoU")
    synthetic_images: int = Field(default=300, ge=0, le=100_000,
                                  description="synthetic defects pasted on the datasets' good images, added to "
                                              "the real masks (0: real masks only)")
    synthetic_share: float = Field(default=0.3, ge=0.0, le=1.0,
                                   description="share of the training draws that are synthetic defects")
    device: Device = "auto"
    seed: int = Field(default=0, ge=0)


register_job_kind(
    JobKind(
        name="train_segmenter",
        entry="trainers.promptseg.job:train_job",
        params=TrainSegmenterParams,
        description="Train DefectScope's promptable defect segmenter (box / click prompts) on defect masks "
                    "and export it in the segmenter format",
        needs_torch=True,
        outputs={"out": "segmenter"},
        path_params=("data",),
    )
)
