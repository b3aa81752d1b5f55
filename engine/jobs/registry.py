"""Registry of job kinds: a name, a pydantic parameter model, and a lazily imported entry point.

Entries are "module:function" strings so that importing the registry (the engine API, the GUI's client, the
inference path) never imports torch; only running a training job does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import DefectScopeError

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class JobKind:
    name: str
    entry: str
    params: type[BaseModel]
    description: str = ""
    needs_torch: bool = False
    # Parameters the engine fills with paths inside the job's artifacts folder (param name -> relative path).
    outputs: dict[str, str] = field(default_factory=dict)
    # Parameters naming files or folders the job reads: the engine keeps them inside its allowed data roots.
    path_params: tuple[str, ...] = ()

    def resolve(self) -> Callable[[BaseModel, Progress], dict]:
        module, func = self.entry.split(":")
        try:
            return getattr(importlib.import_module(module), func)
        except ImportError as exc:
            if self.needs_torch:  # an inspection-PC install or build without the train extra
                raise DefectScopeError(
                    f"job kind '{self.name}' needs torch (the 'train' extra), which this engine does not have "
                    f"({exc}); run it on an engine or cluster set up for training") from None
            raise


_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    if kind.name in _KINDS:
        raise ValueError(f"job kind '{kind.name}' registered twice")
    _KINDS[kind.name] = kind
    return kind


def job_kinds() -> dict[str, JobKind]:
    import engine.jobs.kinds  # noqa: F401  (registers the built-in kinds)

    return dict(_KINDS)


def get_job_kind(name: str) -> JobKind:
    kinds = job_kinds()
    if name not in kinds:
        raise DefectScopeError(f"unknown job kind '{name}'; known: {', '.join(sorted(kinds))}")
    return kinds[name]


def validate_params(kind: JobKind, params: dict[str, Any]) -> BaseModel:
    try:
        return kind.params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}" for err in exc.errors()
        )
        raise DefectScopeError(f"invalid parameters for job '{kind.name}': {problems}") from None


def run_job(name: str, params: dict[str, Any], progress: Progress | None = None) -> dict:
    """Validate and run a job in this process (the engine's workers call this too)."""
    kind = get_job_kind(name)
    validated = validate_params(kind, params)
    return kind.resolve()(validated, progress or (lambda _f, _m: None))
