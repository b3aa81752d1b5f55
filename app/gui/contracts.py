"""The GUI's one import point for the shared engine contracts of issue 13 (C1 model formats, C3 engine layout and
artifact refs, C4 JobView, C6 data home, C8 JobKind.model_output).

Those modules are written in parallel by other packages; until they are merged each name below falls back to a
minimal stand-in with the contract's signature, so the GUI codes against the contract today. After the merge
every `try` takes its first branch and the fallbacks can be deleted (nothing else in app/gui has to change).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import DefectScopeError

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

# ------------------------------------------------------------------------------------------ C6 data home
try:
    from engine.home import default_data_home
except ImportError:  # before H4's engine/home.py
    from engine.datasets.demo import default_data_home  # type: ignore[no-redef]

# ------------------------------------------------------------------------------------------ C4 JobView
try:
    from engine.client import JobView  # type: ignore[attr-defined]
except ImportError:  # before H3's typed job view

    @dataclass(frozen=True)
    class JobView:  # type: ignore[no-redef]
        id: str
        kind: str
        state: str
        params: dict[str, Any] = field(default_factory=dict)
        progress: float = 0.0
        message: str = ""
        error: str | None = None
        result: dict[str, Any] | None = None
        created: float = 0.0
        started: float | None = None
        finished: float | None = None
        placement: str | None = None

        @classmethod
        def from_dict(cls, d: Mapping[str, Any]) -> JobView:
            return cls(id=str(d["id"]), kind=str(d["kind"]), state=str(d["state"]),
                       params=dict(d.get("params") or {}), progress=float(d.get("progress") or 0.0),
                       message=str(d.get("message") or ""), error=d.get("error"), result=d.get("result"),
                       created=float(d.get("created") or 0.0), started=d.get("started"),
                       finished=d.get("finished"), placement=d.get("placement"))

        def to_dict(self) -> dict[str, Any]:
            return asdict(self)

        @property
        def done(self) -> bool:
            return self.state in FINAL_STATES


def job_view(job: JobView | Mapping[str, Any]) -> JobView:
    """A JobView from whatever the client returned (dicts before C4, JobView after)."""
    return job if isinstance(job, JobView) else JobView.from_dict(job)


# ------------------------------------------------------------------------------------------ C3 layout, refs
try:
    from engine.server.layout import artifact_dir, artifact_ref, parse_artifact_ref  # type: ignore[import-not-found]
except ImportError:  # before H3's engine/server/layout.py: the engine's layout as engine.server.api has it
    REF_PREFIX = "job:"

    def artifact_dir(data_dir: Path, job_id: str, name: str) -> Path:  # type: ignore[misc]
        return Path(data_dir) / "jobs" / job_id / "artifacts" / name

    def artifact_ref(job_id: str, name: str) -> str:  # type: ignore[misc]
        return f"{REF_PREFIX}{job_id}/{name}"

    def parse_artifact_ref(text: str) -> tuple[str, str] | None:  # type: ignore[misc]
        if not isinstance(text, str) or not text.startswith(REF_PREFIX) or "/" not in text:
            return None
        job_id, _, name = text[len(REF_PREFIX):].partition("/")
        return (job_id, name) if job_id and name else None


# ------------------------------------------------------------------------------------------ C1 model formats
try:
    from engine.runtime.model_format import ModelInfo, is_model_folder, read_model_info  # type: ignore
except ImportError:  # before H1's engine/runtime/model_format.py: the file-name probing it replaces

    @dataclass(frozen=True)
    class ModelInfo:  # type: ignore[no-redef]
        folder: Path
        task: str
        kind: str
        threshold: float | None
        score_units: str
        metadata: dict

    def is_model_folder(folder: Path) -> bool:  # type: ignore[misc]
        f = Path(folder)
        return (f / "multimodal.json").is_file() or (f / "model.onnx").is_file() or (f / "segmenter.json").is_file()

    def read_model_info(folder: Path) -> ModelInfo:  # type: ignore[misc]
        f = Path(folder)
        name = next((n for n in ("multimodal.json", "segmenter.json", "model.json") if (f / n).is_file()), None)
        if name is None:
            raise DefectScopeError(f"{f}: not a DefectScope model folder (no model.json or multimodal.json)")
        task = "segmenter" if name == "segmenter.json" else "anomaly"
        if name == "model.json" and not (f / "model.onnx").is_file():
            raise DefectScopeError(f"{f}: no model.onnx in this folder")
        try:
            meta = json.loads((f / name).read_text())
        except OSError as exc:
            raise DefectScopeError(f"{f / name}: cannot read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise DefectScopeError(f"{f / name}: not valid JSON ({exc.msg})") from None
        kind = ("multimodal" if name == "multimodal.json" else "segmenter" if task == "segmenter"
                else "unified" if meta.get("kind") == "anomaly/unified" else "memory_bank")
        threshold = meta.get("threshold")
        return ModelInfo(f, task, kind, float(threshold) if isinstance(threshold, (int, float)) else None,
                         str(meta.get("score_units") or ""), meta)


# ------------------------------------------------------------------------------------------ C8 model outputs
_MODEL_OUTPUTS_BEFORE_C8 = {"train_anomaly": "model", "train_multimodal": "model", "train_unified": "model"}


def model_output(kind_name: str) -> str | None:
    """The artifact name holding a scoring model for jobs of this kind (JobKind.model_output), else None."""
    from engine.jobs.registry import job_kinds

    kind = job_kinds().get(kind_name)
    if kind is None:
        return None
    if hasattr(kind, "model_output"):
        return kind.model_output
    return _MODEL_OUTPUTS_BEFORE_C8.get(kind_name)


__all__ = ["FINAL_STATES", "JobView", "ModelInfo", "artifact_dir", "artifact_ref", "default_data_home",
           "is_model_folder", "job_view", "model_output", "parse_artifact_ref", "read_model_info"]
