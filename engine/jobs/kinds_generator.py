"""The train_generator job kind: Defect-Gen (trainers.defectgen), a diffusion generator of defective images with
their pixel masks, trained on the few real defective images per type that a segmentation model with the same
`shots_per_type` and `shots_seed` would train on (engine.datasets.segmentation's rule), so it never learns from a
held-out defect.

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device


class TrainGeneratorParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root with defect masks (MVTec layout: ground_truth/<defect type>/)")
    out: str = Field(description="folder the generator is written to (large.pt, small.pt, generator.json)")
    category: str | None = Field(default=None, description="category (sub-folder) of a dataset with several")
    classes: list[str] | None = Field(default=None, min_length=1,
                                      description="defect types to generate, e.g. crack,blowhole (default: every "
                                                  "type with masks)")
    shots_per_type: int | None = Field(default=5, ge=1, le=100_000,
                                       description="real defective images per defect type to train on, drawn by "
                                                   "shots_seed as train segmentation draws them (None: the "
                                                   "dataset's training split)")
    shots_seed: int = Field(default=0, ge=0, description="seed of the draw of the real training images")
    preset: Literal["cpu_tiny", "gpu"] = Field(
        default="cpu_tiny", description="model size: cpu_tiny (64 px, ~1-3 M parameters per model, a CPU smoke "
                                        "run) or gpu (128 px, wider models, a real run on one GPU)")
    steps: int | None = Field(default=None, ge=1, le=10_000_000,
                              description="training steps of each of the two models (default: the preset's)")
    batch_size: int | None = Field(default=None, ge=1, le=512,
                                   description="images per training step (default: the preset's)")
    switch_step: int = Field(default=400, ge=1, le=999,
                             description="timestep s of the switch: the large model denoises t = 999 .. s, the "
                                         "small one t = s-1 .. 0")
    lr: float | None = Field(default=None, gt=0, le=1.0, title="Learning rate",
                             description="step size of the optimizer (default: the preset's)")
    device: Device = "auto"
    seed: int = Field(default=0, ge=0, description="random seed of training (same seed and draw, same generator)")
    time_budget_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600,
                                        description="stop training after this many seconds (shared by the two "
                                                    "models in proportion to their steps)")


register_job_kind(
    JobKind(
        name="train_generator",
        entry="trainers.defectgen.job:train_generator_job",
        params=TrainGeneratorParams,
        description="Train a Defect-Gen diffusion generator of defective images with pixel masks (a large model "
                    "with attention for the noisy steps, a small one for local texture)",
        needs_torch=True,
        outputs={"out": "generator"},
        path_params=("data",),
    )
)


class SampleGeneratorParams(BaseModel, extra="forbid"):
    generator: str = Field(description="a trained generator folder (train_generator's out: generator.json)")
    out: str = Field(description="new folder for the synthetic set (MVTec layout, train/ only, synthetic.json)")
    data: str | None = Field(default=None,
                             description="dataset whose training good parts receive the generated defects "
                                         "(default: the one the generator was trained on)")
    count_per_type: int = Field(default=50, ge=1, le=100_000,
                                description="synthetic images per defect type (a generated defect pasted on a "
                                            "good part; windows that painted nothing of their type are redrawn)")
    sampling_steps: int = Field(default=50, ge=2, le=1000,
                                description="deterministic DDIM steps over the shared schedule (fewer: faster, "
                                            "coarser)")
    max_draws_factor: int = Field(default=20, ge=1, le=1000,
                                  description="stop a type after drawing this many times the images asked for (a "
                                              "type the generator rarely paints is then short)")
    device: Device = "auto"
    seed: int = Field(default=0, ge=0, description="seed of the sampling (same seed, same images)")


register_job_kind(
    JobKind(
        name="sample_generator",
        entry="trainers.defectgen.job:sample_generator_job",
        params=SampleGeneratorParams,
        description="Sample a Defect-Gen generator into a synthetic set (images with their masks) for training",
        needs_torch=True,
        outputs={"out": "synthetic_set"},
        path_params=("generator", "data"),
    )
)
