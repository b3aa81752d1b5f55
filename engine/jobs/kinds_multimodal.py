"""The train_multimodal job kind: RGB + 3D memory banks with cross-modal distillation (trainers.multimodal).

Kept torch-free: the entry point is imported only when a job runs.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind


class TrainMultimodalParams(BaseModel, extra="forbid"):
    data: str = Field(description="dataset root in the MVTec 3D-AD layout (rgb PNG + xyz TIFF, or a depth map "
                                  "(8/16-bit PNG or TIFF, float TIFF), per part)")
    category: str | None = Field(default=None, description="category folder; required when there are several")
    out: str = Field(description="model folder (rgb_features.onnx, rgb_to_geo.onnx, geo_to_rgb.onnx, banks.npz, "
                                 "multimodal.json)")
    image_size: int = Field(default=256, ge=64, le=1024, multiple_of=64, description="RGB side at the backbone")
    geo_grid: int = Field(default=128, ge=32, le=1024, description="cloud side before FPFH (a multiple of "
                                                                     "image_size / 8)")
    distill_epochs: int = Field(default=60, ge=1, le=10_000)
    coreset_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    rgb_weight: float | None = Field(default=None, ge=0.0, le=1000.0,
                                     description="fusion weight of the RGB maps (measured or distilled), fixed by "
                                                 "hand; blank: chosen from held-out good parts")
    geo_weight: float | None = Field(default=None, ge=0.0, le=1000.0,
                                     description="fusion weight of the 3D maps (measured or distilled), fixed by "
                                                 "hand; blank: chosen from held-out good parts (not both 0: the "
                                                 "job refuses that before it starts training)")
    seed: int = Field(default=0, ge=0)


register_job_kind(
    JobKind(
        name="train_multimodal",
        entry="trainers.multimodal.job:train_job",
        params=TrainMultimodalParams,
        description="Train the RGB + 3D anomaly model (RGB and FPFH memory banks, RGB<->3D distillation for a "
                    "missing sensor) on good parts",
        needs_torch=True,
        outputs={"out": "model"},
        path_params=("data",),
        model_output="model",
    )
)
