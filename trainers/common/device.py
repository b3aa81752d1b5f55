"""Which torch device a trainer runs on, from the job's `device` parameter (auto / cpu / cuda)."""

from __future__ import annotations

import torch

from engine.errors import DefectScopeError


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when torch sees a GPU, else CPU; cuda without a GPU is a clear error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DefectScopeError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    if device not in ("cpu", "cuda"):
        raise DefectScopeError(f"--device must be auto, cpu or cuda (got '{device}')")
    return torch.device(device)
