"""The auto-prompt job kind: anomaly-map blobs -> segmenter prompts -> proposed defect masks for a dataset."""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.registry import JobKind, register_job_kind
from engine.jobs.types import Device, Split


class ProposeMasksParams(BaseModel, extra="forbid"):
    model: str = Field(description="exported anomaly model directory")
    segmenter: str = Field(description="promptable segmenter directory (encoder.onnx, decoder.onnx)")
    data: str = Field(description="dataset root")
    category: str | None = None
    splits: list[Split] | None = None
    threshold: float | None = Field(default=None, description="map level of a blob (default: the model's own)")
    out: str = Field(description="folder for proposals.json")
    device: Device = "auto"


register_job_kind(
    JobKind(
        name="propose_masks",
        entry="engine.auto_prompts:propose_masks_job",
        params=ProposeMasksParams,
        description="Turn anomaly-map blobs into segmenter prompts and propose a defect mask for each",
        outputs={"out": "proposals"},
        path_params=("model", "segmenter", "data"),
    )
)


class ExportTextEncoderParams(BaseModel, extra="forbid"):
    out: str = Field(description="folder for text_encoder.onnx, tokenizer.json, text_encoder.json")


register_job_kind(
    JobKind(
        name="export_text_encoder",
        entry="trainers.text.export:export_text_encoder_job",
        params=ExportTextEncoderParams,
        description="Export the pip-shipped all-MiniLM-L6-v2 to ONNX for text prompts (once per install)",
        needs_torch=True,
        outputs={"out": "text_encoder"},
    )
)
