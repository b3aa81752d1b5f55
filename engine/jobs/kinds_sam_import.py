"""The import_sam job kind: a user's SAM / MobileSAM checkpoint -> a segmenter folder (torch-free registration)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind

SamFamily = Literal["auto", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam_vit_t"]


class ImportSamParams(BaseModel, extra="forbid"):
    checkpoint: str = Field(
        description="SAM (sam_vit_b/l/h_*.pth) or MobileSAM (mobile_sam.pt) checkpoint: the official state dict")
    family: SamFamily = Field(
        default="auto",
        description="model family; 'auto' tells it from the checkpoint's tensors (a named family is checked "
                    "against them)")
    out: str = Field(description="segmenter folder written (encoder.onnx, decoder.onnx, segmenter.json)")


register_job_kind(
    JobKind(
        name="import_sam",
        entry="trainers.sam.job:import_sam_job",
        params=ImportSamParams,
        description="Convert a SAM or MobileSAM checkpoint into a promptable segmenter (ONNX, parity-checked)",
        needs_torch=True,
        outputs={"out": "segmenter"},
        path_params=("checkpoint",),
    )
)
