"""Parameter types that several job kinds share (one definition, so the CLI and the dialogs offer the same
choices for every kind)."""

from __future__ import annotations

from typing import Literal

Device = Literal["auto", "cpu", "cuda"]
Split = Literal["train", "validation", "test", "unspecified"]

__all__ = ["Device", "Split"]
