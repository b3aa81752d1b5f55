"""GPU inventory and placement for jobs, without torch (the engine process never imports it).

Each job asks for a device (auto, cpu, cuda). A GPU job gets one GPU through CUDA_VISIBLE_DEVICES, with at most
`jobs_per_gpu` jobs on a GPU at once; without any GPU on the engine, such a job runs on the CPU and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mb: int


@dataclass(frozen=True)
class Placement:
    device: str  # what the worker is told: "cuda" or "cpu"
    gpu: Gpu | None
    note: str

    def env(self) -> dict[str, str]:
        # An empty CUDA_VISIBLE_DEVICES hides every GPU from CPU jobs, so they cannot grab one by accident.
        return {"CUDA_VISIBLE_DEVICES": str(self.gpu.index) if self.gpu else ""}


def detect_gpus() -> list[Gpu]:
    """GPUs that nvidia-smi reports; none when it is absent or fails (no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2]))))
    return gpus


class GpuPool:
    def __init__(self, gpus: list[Gpu], jobs_per_gpu: int = 1) -> None:
        self.gpus = gpus
        self.jobs_per_gpu = jobs_per_gpu
        self._busy: dict[int, int] = {g.index: 0 for g in gpus}
        self._lock = threading.Lock()

    def acquire(self, wanted: str) -> Placement | None:
        """A placement for a job asking for `wanted`, or None when every GPU is full (the job waits)."""
        if wanted == "cpu":
            return Placement("cpu", None, "running on CPU (asked for)")
        if not self.gpus:
            return Placement("cpu", None, "no GPU on this engine: running on CPU")
        with self._lock:
            free = [g for g in self.gpus if self._busy[g.index] < self.jobs_per_gpu]
            if not free:
                return None
            gpu = min(free, key=lambda g: (self._busy[g.index], g.index))
            self._busy[gpu.index] += 1
        return Placement("cuda", gpu, f"running on GPU {gpu.index} ({gpu.name})")

    def release(self, placement: Placement) -> None:
        if placement.gpu is not None:
            with self._lock:
                self._busy[placement.gpu.index] -= 1
