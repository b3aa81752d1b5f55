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
    # The output (one of `outputs`' artifact names) that holds a scoring model, or None: what the Models panel
    # lists, so a new model kind declares it here instead of being added to a tuple in the GUI.
    model_output: str | None = None

    def __post_init__(self) -> None:
        if self.model_output is not None and self.model_output not in self.outputs.values():
            raise ValueError(f"job kind '{self.name}': model_output '{self.model_output}' is not one of its "
                             f"outputs ({', '.join(self.outputs.values()) or 'none'})")
        unknown = [p for p in (*self.outputs, *self.path_params) if p not in self.params.model_fields]
        if unknown:
            raise ValueError(f"job kind '{self.name}': {', '.join(unknown)} not fields of {self.params.__name__}")

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
    """Every registered kind (the package's __init__ has registered the built-in ones: engine.jobs.catalog)."""
    return dict(_KINDS)


def get_job_kind(name: str) -> JobKind:
    kinds = job_kinds()
    if name not in kinds:
        raise DefectScopeError(f"unknown job kind '{name}'; known: {', '.join(sorted(kinds))}")
    return kinds[name]


def model_output(kind_name: str) -> str | None:
    """The output holding a scoring model for jobs of this kind (JobKind.model_output); None for other kinds and
    for kinds this engine does not know (a newer engine's job in a list)."""
    kind = job_kinds().get(kind_name)
    return kind.model_output if kind is not None else None


def param_problems(model: type[BaseModel], params: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each value the params model refuses; field is dotted for nested values ("scales.1"),
    "params" for the whole. The CLI and the dialogs map the field to their option or widget."""
    try:
        model.model_validate(params)
    except ValidationError as exc:
        return [(".".join(str(p) for p in err["loc"]) or "params", err["msg"]) for err in exc.errors()]
    return []


def validate_params(kind: JobKind, params: dict[str, Any]) -> BaseModel:
    try:
        return kind.params.model_validate(params)
    except ValidationError:
        problems = "; ".join(f"{field}: {message}" for field, message in param_problems(kind.params, params))
        raise DefectScopeError(f"invalid parameters for job '{kind.name}': {problems}") from None


def run_job(name: str, params: dict[str, Any], progress: Progress | None = None) -> dict:
    """Validate and run a job in this process (the engine's workers call this too)."""
    kind = get_job_kind(name)
    validated = validate_params(kind, params)
    return kind.resolve()(validated, progress or (lambda _f, _m: None))
