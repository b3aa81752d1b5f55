"""Request and response models of the engine's HTTP API: what /openapi.json promises a client.

The job request is a discriminated union over `kind`, built from the job registry: each kind's branch carries its
own parameter schema, so a client sees exactly what each kind accepts. A kind's outputs (JobKind.outputs) are set
by the engine and are not part of its request; path parameters are strings, which may also be references such as
"job:<id>/<artifact>" that the engine resolves.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.jobs.registry import JobKind
from engine.server.store import STATES

JobState = Literal[STATES]  # type: ignore[valid-type]


class JobCreated(BaseModel):
    id: str = Field(description="the new job's id")


class JobResponse(BaseModel):
    """A job as the engine records it (engine.client.JobView reads this)."""

    id: str
    kind: str = Field(description="the job kind (a newer engine's list may hold kinds this schema predates)")
    state: JobState
    params: dict[str, Any] = Field(description="validated: defaults filled, references resolved, outputs placed")
    # Not constrained to 0..1 here: a response model refusing a worker's rounding would turn a GET into a 500.
    progress: float = Field(description="0..1")
    message: str
    error: str | None
    result: dict[str, Any] | None
    created: float = Field(description="seconds since the epoch")
    started: float | None
    finished: float | None
    placement: str | None = Field(description="where it runs: a GPU, or the CPU with the reason")
    refs: dict[str, str] = Field(description="path parameters given as references, as given")


class CancelResponse(BaseModel):
    id: str
    cancelling: bool = Field(description="false when the job had already left its worker")


class ArtifactEntry(BaseModel):
    name: str = Field(description="path inside the job's artifacts, POSIX separators")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str
    executor: str = Field(description='"local", or "ray <address>"')


class UploadResponse(BaseModel):
    id: str
    path: str = Field(description="the folder on the engine to pass as a job's data")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def request_params_model(kind: JobKind) -> type[BaseModel]:
    """The kind's params model without its outputs (the engine places those in the job's artifacts)."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in kind.params.model_fields.items() if name not in kind.outputs
    }
    return create_model(f"{_camel(kind.name)}Params", __config__=ConfigDict(extra="forbid"),
                        __doc__=kind.params.__doc__, **fields)


def request_model(kind: JobKind) -> type[BaseModel]:
    """One branch of the job request: {"kind": <this kind>, "params": <its parameters>}."""
    params = request_params_model(kind)
    required = any(info.is_required() for info in params.model_fields.values())
    params_field = Field(description=f"parameters of {kind.name}") if required else Field(
        default_factory=params, description=f"parameters of {kind.name} (every one has a default)")
    return create_model(
        f"{_camel(kind.name)}Job", __config__=ConfigDict(extra="forbid"), __doc__=kind.description or None,
        kind=(Literal[kind.name], Field(description=kind.description)),  # type: ignore[valid-type]
        params=(params, params_field),
    )


def job_request_type(kinds: dict[str, JobKind]) -> Any:
    """The body of POST /jobs: a union of every kind's request, told apart by `kind`."""
    if not kinds:
        raise ValueError("no job kinds registered")
    branches = tuple(request_model(kinds[name]) for name in sorted(kinds))
    if len(branches) == 1:
        return branches[0]
    return Annotated[Union[branches], Field(discriminator="kind", title="JobRequest")]  # noqa: UP007 (a runtime tuple of models)
