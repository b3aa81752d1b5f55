"""ONNX Runtime sessions on the best provider that really works, and which one that was.

onnxruntime-gpu lists CUDA as *available* on machines without a GPU; creating a CUDA session there either fails
or silently falls back to CPU. So we ask for CUDA only when a driver is present, and always report the provider
the session actually uses (`session.get_providers()[0]`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def nvidia_driver_present() -> bool:
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version")
    if sys.platform == "win32":
        return os.path.exists(os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "nvcuda.dll"))
    return False


def create_session(
    model: str | Path | bytes, device: str = "auto", threads: int | None = None
) -> tuple[ort.InferenceSession, str]:
    """(session, provider actually used). device: auto | cpu | cuda."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # ORT's own CUDA-probe warnings are noise; we report the provider ourselves
    src = model if isinstance(model, bytes) else str(model)
    want_cuda = device == "cuda" or (device == "auto" and nvidia_driver_present())
    if want_cuda and CUDA in ort.get_available_providers():
        try:
            sess = ort.InferenceSession(src, opts, providers=[CUDA, CPU])
            if sess.get_providers()[0] == CUDA:
                return sess, CUDA
            log.warning("CUDA execution provider did not initialise; running on CPU")
        except Exception as exc:  # a broken CUDA/cuDNN install must not stop inspection
            log.warning("CUDA execution provider failed (%s); running on CPU", exc)
    elif device == "cuda":
        log.warning("CUDA asked for but no NVIDIA driver/provider found; running on CPU")
    sess = ort.InferenceSession(src, opts, providers=[CPU])
    return sess, sess.get_providers()[0]
