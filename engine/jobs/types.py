"""Parameter types that several job kinds share (one definition, so the CLI and the dialogs offer the same
choices for every kind)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

Device = Annotated[Literal["auto", "cpu", "cuda"],
                   Field(description="where the job runs (auto: CUDA when available, else the CPU)")]
Split = Literal["train", "validation", "test", "unspecified"]

__all__ = ["Device", "Split"]
