"""The engine's one error body, `{"detail": "<one line>", "field": "<params.x or null>"}`, for every error it answers.

Routes raise `api_error(...)` and declare their statuses with `error_responses(...)`; `install_error_handlers`
makes FastAPI's own answers (a 404 or 405 from the router, a 422 from request validation) use the same body, so a
client parses one shape whatever went wrong.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine.errors import DefectScopeError


class ErrorBody(BaseModel):
    """Every error answer of the engine."""

    detail: str = Field(description="one line naming the field or file at fault")
    field: str | None = Field(description="the request field at fault (e.g. params.data, kind), or null")


class ApiError(HTTPException):
    """An HTTPException that names the request field at fault."""

    def __init__(self, status: int, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers=headers)
        self.field = field


class OutsideDataRootsError(DefectScopeError):
    """A path parameter the engine may not read: outside its --data-root folders (answered 403)."""


def api_error(status: int, detail: str, field: str | None = None) -> HTTPException:
    """The exception a route raises for an error answer: ErrorBody with this status (field: the one the detail
    names at its start when not given)."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None  # RFC 9110: a 401 names its scheme
    return ApiError(status, detail, field if field is not None else field_of(detail), headers)


# Engine messages start with the field they are about ("params.data: ... is outside the engine's data roots").
_LEADING_FIELD = re.compile(r"^(params(?:\.[A-Za-z0-9_]+)+|kind):")


def field_of(message: str) -> str | None:
    """The field a DefectScopeError's message names at its start, if any."""
    match = _LEADING_FIELD.match(message)
    return match.group(1) if match else None


# What each status means on this engine: the description a client reads in /openapi.json.
STATUS_MEANINGS: dict[int, str] = {
    400: "a malformed request body, or a reference (job:<id>/<name>, upload:<id>) this engine cannot resolve",
    401: "missing or wrong bearer token",
    403: "a path parameter outside the engine's data roots",
    404: "no such job, artifact, upload, upload session or blob",
    409: "not now: the job is already finished, an upload is still missing files or in use by a job, or a chunk "
         "leaves a gap (the answer says where to resume)",
    411: "a chunk without Content-Length",
    413: "the request body is larger than the engine accepts",
    422: "the request does not match the schema, or a parameter the job kind refuses",
}


ERROR_BODY_REF = "#/components/schemas/ErrorBody"  # added to the schema's components by the engine's app


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with ErrorBody (and WWW-Authenticate on 401).

    Given as JSON content, not as a `model`: FastAPI would file a model under the route's own media type, and a
    route answering text or a file still answers its errors as JSON.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": STATUS_MEANINGS[status],
                                 "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        out[status] = entry
    return out


def _body(status: int, detail: str, field: str | None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=detail, field=field).model_dump(), status_code=status, headers=headers)


def _location(loc: Sequence[Any], tags: Iterable[str]) -> str:
    """A validation error's location as the client wrote it: "params.image_size", without FastAPI's "body"
    and without the discriminated union's branch (the kind's name)."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts and parts[0] in set(tags):
        parts = parts[1:]
    return ".".join(parts)


def _validation_line(
    error: dict[str, Any], tags: Sequence[str], outputs: Mapping[str, Collection[str]]
) -> tuple[str, str | None]:
    """(one line, field) for one pydantic error of a request."""
    kind = error.get("type", "")
    if kind == "union_tag_invalid":
        tag = (error.get("ctx") or {}).get("tag", "")
        return f"kind: unknown job kind {tag!r}; known: {', '.join(sorted(tags))}", "kind"
    if kind == "union_tag_not_found":
        return "kind: required (one of " + ", ".join(sorted(tags)) + ")", "kind"
    if kind == "json_invalid":
        return f"request body: not valid JSON ({(error.get('ctx') or {}).get('error', error.get('msg'))})", None
    field = _location(error.get("loc", ()), tags) or None
    if kind == "extra_forbidden" and field and field.startswith("params."):
        loc = [str(p) for p in error.get("loc", ())]
        job_kind = next((p for p in loc if p in tags), "this job kind")
        why = "set by the engine (outputs go to the job's artifacts)" if field[len("params."):] in (
            outputs.get(job_kind, ())) else f"not a parameter of {job_kind}"
        return f"{field}: {why}", field
    return f"{field or 'request body'}: {error.get('msg', 'invalid')}", field


def install_error_handlers(
    app: FastAPI, tags: Sequence[str] = (), outputs: Mapping[str, Collection[str]] | None = None
) -> None:
    """Every error answer as ErrorBody. `tags`: the discriminator values (job kinds) of request bodies, dropped
    from error locations so that a field reads "params.data", not "train_anomaly.params.data"; `outputs`: per
    kind, the parameters the engine sets itself (named as such when a client sends one)."""
    outputs = outputs or {}

    @app.exception_handler(RequestValidationError)
    async def validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        lines = [_validation_line(e, tags, outputs) for e in exc.errors()] or [("request: invalid", None)]
        return _body(422, "; ".join(line for line, _ in lines), lines[0][1])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # The router's own Allow lists only the first route matching the path; /jobs has two (GET, POST).
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        return _body(exc.status_code, str(exc.detail), getattr(exc, "field", None), headers or None)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this request's path.

    Asked of each route by matching the request with each method (a FULL match: path and method), so routes of
    included routers count too (FastAPI keeps those behind one lazily built entry without `methods`).
    """
    methods: set[str] = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in app.router.routes):
            methods.add(method)
    return sorted(methods)
