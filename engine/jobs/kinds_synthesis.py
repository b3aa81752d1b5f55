"""The synthesize job kind: synthetic defective images with their masks, written as a synthetic set
(engine.synthesis.synthetic_set) that training takes with --extra; and curate_synthetic_set, which removes the
samples a person rejected from such a set (engine.synthesis.curate).

Method "procedural" (the fast default, torch-free): real defects of each type, cut along their masks, pasted on
good parts (engine.synthesis.procedural). Donors are only the real images a model trained with the same
`shots_per_type` and `shots_seed` would train on (engine.datasets.segmentation's rule), so synthesis never copies a
held-out defect into training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind


class SynthesizeParams(BaseModel, extra="forbid"):
    data: str = Field(description="real dataset with defect masks (MVTec layout: ground_truth/<defect type>/)")
    out: str = Field(description="new folder for the synthetic set (MVTec layout, train/ only, synthetic.json)")
    method: Literal["procedural"] = Field(default="procedural",
                                          description="procedural: real defects cut along their masks and pasted "
                                                      "on good parts")
    category: str | None = Field(default=None, description="category (sub-folder) of a dataset with several")
    classes: list[str] | None = Field(default=None, min_length=1,
                                      description="defect types to synthesise (default: every type with masks)")
    count_per_type: int = Field(default=50, ge=1, le=100_000, description="synthetic images per defect type")
    shots_per_type: int | None = Field(default=None, ge=1, le=100_000,
                                       description="real images per type the donors are drawn from, as "
                                                   "train segmentation draws them (same shots_seed: same images)")
    shots_seed: int = Field(default=0, ge=0, description="seed of the draw of the real donor images")
    seed: int = Field(default=0, ge=0, description="seed of the synthesis (same seed, same images)")


register_job_kind(
    JobKind(
        name="synthesize",
        entry="engine.synthesis.job:synthesize_job",
        params=SynthesizeParams,
        description="Synthesise defective images with pixel masks (procedural cut-paste of real defects on good "
                    "parts) into a synthetic set for training",
        needs_torch=False,
        outputs={"out": "synthetic_set"},
        path_params=("data",),
    )
)


class CurateSyntheticSetParams(BaseModel, extra="forbid"):
    folder: str = Field(description="a synthetic set (synthetic.json) to remove samples from, in place: a folder "
                                    "or a synthesis job's artifact (job:<id>/synthetic_set)")
    reject: list[str] = Field(min_length=1, max_length=1_000_000,
                              description="samples to remove, each named by its image as synthetic.json lists it "
                                          "(e.g. train/crack/0003.png); their masks go too")


register_job_kind(
    JobKind(
        name="curate_synthetic_set",
        entry="engine.synthesis.job:curate_job",
        params=CurateSyntheticSetParams,
        description="Remove rejected samples (image and mask files, manifest rows) from a synthetic set",
        needs_torch=False,
        # The set is changed where it is (a synthesis job's artifact on the engine): no output of its own.
        path_params=("folder",),
    )
)
