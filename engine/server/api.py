"""The engine's HTTP API (FastAPI): jobs, their events (SSE), logs, cancel and artifacts, behind a bearer token."""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import engine
from engine.checksums import sha256_file
from engine.errors import ArtifactRefError, DefectScopeError
from engine.jobs.registry import get_job_kind, job_kinds, validate_params
from engine.server import layout
from engine.server.errors import (
    ErrorBody,
    OutsideDataRootsError,
    api_error,
    error_responses,
    install_error_handlers,
)
from engine.server.executor import LocalExecutor, RayExecutor, is_final
from engine.server.schemas import (
    ArtifactEntry,
    CancelResponse,
    HealthResponse,
    JobCreated,
    JobResponse,
    UploadResponse,
    job_request_type,
)
from engine.server.store import JobStore
from engine.server.upload_routes import upload_router
from engine.server.upload_store import UploadStore
from engine.server.uploads import UploadError, UploadLimits, extract_upload
from engine.worker import read_new_events


class Engine:
    """The engine's state: the job store and the executor, rooted in one data folder (engine.server.layout)."""

    def __init__(
        self, data_dir: Path, token: str, max_concurrent: int = 1, data_roots: list[Path] | None = None,
        ray_address: str | None = None, ray_token: str | None = None, upload_cache_bytes: int = 50 << 30,
    ) -> None:
        self.data_dir = data_dir
        self.token = token
        # None: any path (a local engine serving its own user); otherwise job inputs must lie inside these.
        self.data_roots = [r.resolve() for r in data_roots] if data_roots else None
        self.store = JobStore(layout.database_file(data_dir))
        self.interrupted = self.store.fail_interrupted("engine restarted while the job was queued or running")
        self.executor: LocalExecutor = (
            RayExecutor(self.store, data_dir, ray_address, ray_token, max_concurrent) if ray_address
            else LocalExecutor(self.store, data_dir, max_concurrent)
        )
        self.uploads_dir = layout.uploads_dir(data_dir)
        self.upload_limits = UploadLimits()
        self.upload_store = UploadStore(data_dir, self.upload_limits, upload_cache_bytes, self._uploads_in_use)
        if self.data_roots is not None:
            self.data_roots.append(self.uploads_dir.resolve())  # uploaded datasets are always usable
            # So are the engine's own results: a unified model's next step resumes from its earlier job's folder.
            self.data_roots.append(layout.jobs_dir(data_dir).resolve())

    def submit(self, kind_name: str, params: dict[str, Any]) -> str:
        """Check, resolve and validate a job's parameters, record what will really run, and queue it.

        Stored are the validated parameters (every default filled, artifact refs resolved to folders, outputs
        placed in the job's artifacts), so the job's record shows exactly what its worker runs.
        """
        kind = get_job_kind(kind_name)
        for name in kind.outputs:
            if name in params:
                raise DefectScopeError(f"params.{name}: set by the engine (outputs go to the job's artifacts)")
        with self.upload_store.lock:  # an upload the job names cannot be evicted before the job is queued
            resolved, refs = self._resolve_refs(kind.path_params, params)
            placeholders = {n: "placeholder" for n in kind.outputs}
            validated = validate_params(kind, {**resolved, **placeholders}).model_dump(mode="json")
            self._check_paths(kind.path_params, validated)
            job_id = self.store.new_id()
            artifacts = layout.artifacts_dir(self.data_dir, job_id)
            full = {**validated, **{n: str(artifacts / rel) for n, rel in kind.outputs.items()}}
            self.store.create(kind.name, full, refs=refs, job_id=job_id)
        self.executor.submit(job_id, kind.name, full)
        return job_id

    def _uploads_in_use(self) -> set[str]:
        """Uploads that queued or running jobs read (by ref, or by a path inside an upload's folder)."""
        used = set()
        uploads = self.uploads_dir.resolve()
        for rec in self.store.list():
            if rec.state not in ("queued", "running"):
                continue
            for ref in rec.refs.values():
                parsed = layout.parse_upload_ref(ref)
                if parsed:
                    used.add(parsed[0])
            values = [v for value in rec.params.values() for v in (value if isinstance(value, list) else [value])]
            for value in values:  # list parameters (several folders) hold paths too
                path = Path(value) if isinstance(value, str) else None
                if path is not None and path.is_absolute() and path.resolve().is_relative_to(uploads):
                    parts = path.resolve().relative_to(uploads).parts
                    if parts:
                        used.add(parts[0])
        return used

    def _resolve_refs(
        self, names: tuple[str, ...], params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Path parameters given as "job:<id>/<artifact>" or "upload:<id>[/<path>]" -> that folder or file here;
        and the refs as given. A list parameter (several folders) has each item resolved, its refs recorded as
        "<name>.<index>"."""
        resolved, refs = dict(params), {}
        for name in names:
            if name not in params:
                continue
            value = params[name]
            if isinstance(value, list):
                items = []
                for i, item in enumerate(value):
                    path, ref = self._resolve_ref(f"{name}.{i}", item)
                    items.append(path)
                    if ref is not None:
                        refs[f"{name}.{i}"] = ref
                resolved[name] = items
                continue
            resolved[name], ref = self._resolve_ref(name, value)
            if ref is not None:
                refs[name] = ref
        return resolved, refs

    def _resolve_ref(self, name: str, value: Any) -> tuple[Any, str | None]:
        """(the folder or file a ref names, the ref) for one value; (the value, None) for anything not a ref."""
        if layout.looks_like_upload_ref(value):
            upload = layout.parse_upload_ref(value)
            if upload is None:
                raise ArtifactRefError(f"params.{name}: {value!r} is not an upload reference "
                                       "(expected upload:<upload id>[/<path inside>])")
            try:
                return str(self.upload_store.resolve(*upload)), value
            except LookupError as exc:
                raise ArtifactRefError(f"params.{name}: {value}: {exc}") from None
        if not layout.looks_like_artifact_ref(value):
            return value, None
        parsed = layout.parse_artifact_ref(value)
        if parsed is None:
            raise ArtifactRefError(f"params.{name}: {value!r} is not an artifact reference "
                                   "(expected job:<job id>/<artifact name>, e.g. job:3f2a9c1b7d4e/model)")
        job_id, artifact = parsed
        source = self.store.get(job_id)
        if source is None:
            raise ArtifactRefError(f"params.{name}: {value}: this engine has no job '{job_id}'")
        if source.state != "succeeded":
            raise ArtifactRefError(f"params.{name}: {value}: job '{job_id}' is {source.state}, not succeeded")
        path = layout.artifact_dir(self.data_dir, job_id, artifact)
        if not path.exists():
            raise ArtifactRefError(f"params.{name}: {value}: job '{job_id}' has no artifact '{artifact}'")
        return str(path), value

    def _check_paths(self, names: tuple[str, ...], params: dict[str, Any]) -> None:
        if self.data_roots is None:
            return
        for name in names:
            if name not in params or params[name] is None:
                continue
            value = params[name]
            # A list parameter (several folders): every item must be inside the data roots.
            for label, item in ([(f"{name}.{i}", v) for i, v in enumerate(value)] if isinstance(value, list)
                                else [(name, value)]):
                try:
                    path = Path(str(item)).resolve()
                except ValueError:  # a NUL byte, or text the file system cannot encode: no readable path
                    raise OutsideDataRootsError(
                        f"params.{label}: {item!r} is not a path this engine can read") from None
                if not any(path.is_relative_to(root) for root in self.data_roots):
                    roots = ", ".join(str(r) for r in self.data_roots)
                    raise OutsideDataRootsError(f"params.{label}: {item} is outside the engine's data roots ({roots})")

    def artifacts_dir(self, job_id: str) -> Path:
        return layout.artifacts_dir(self.data_dir, job_id)


# Declared as a security scheme so that /openapi.json says which routes need the token (all but /health).
BEARER = HTTPBearer(auto_error=False, description="the engine's token (DATA_DIR/token or --token-file)")
_TEXT = {"schema": {"type": "string"}}
# One server-sent event: unnamed ones carry a job event as JSON (started, progress, log...), the last is "end".
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["data"],
}


def create_app(eng: Engine) -> FastAPI:
    """The engine's routes; every status each one answers is declared with its body (see engine/server/errors.py)."""
    app = FastAPI(title="DefectScope engine", version=engine.__version__)
    kinds = job_kinds()
    install_error_handlers(app, tags=tuple(kinds), outputs={name: set(k.outputs) for name, k in kinds.items()})

    def auth(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        given = credentials.credentials if credentials is not None else ""
        # Constant-time comparison: response timing must not reveal how much of a guessed token was right.
        if credentials is None or not hmac.compare_digest(given.encode(), eng.token.encode()):
            raise api_error(401, "missing or wrong token")

    def job_or_404(job_id: str) -> dict:
        rec = eng.store.get(job_id)
        if rec is None:
            raise api_error(404, f"no job '{job_id}'")
        return rec.to_dict()

    @app.get("/health", response_model=HealthResponse)
    def health() -> dict:
        executor = f"ray {eng.executor.address}" if isinstance(eng.executor, RayExecutor) else "local"
        return {"status": "ok", "version": engine.__version__, "executor": executor}

    def submit(req) -> dict:  # annotated below: the union of every kind's request, built from the registry
        try:
            return {"id": eng.submit(req.kind, req.params.model_dump(exclude_unset=True))}
        except ArtifactRefError as exc:  # well-formed, but naming something this engine does not have
            raise api_error(400, str(exc)) from None
        except OutsideDataRootsError as exc:
            raise api_error(403, str(exc)) from None
        except DefectScopeError as exc:  # a rule the params model checks beyond its schema
            raise api_error(422, str(exc)) from None

    submit.__annotations__["req"] = Annotated[job_request_type(kinds), Body()]
    app.post("/jobs", dependencies=[Depends(auth)], response_model=JobCreated,
             responses=error_responses(400, 401, 403, 422))(submit)

    @app.get("/jobs", dependencies=[Depends(auth)], response_model=list[JobResponse],
             responses=error_responses(401))
    def list_jobs() -> list[dict]:
        return [r.to_dict() for r in eng.store.list()]

    @app.get("/jobs/{job_id}", dependencies=[Depends(auth)], response_model=JobResponse,
             responses=error_responses(401, 404))
    def get_job(job_id: str) -> dict:
        return job_or_404(job_id)

    @app.post("/jobs/{job_id}/cancel", dependencies=[Depends(auth)], response_model=CancelResponse,
              responses=error_responses(401, 404, 409))
    def cancel(job_id: str) -> dict:
        job = job_or_404(job_id)
        if is_final(job["state"]):
            raise api_error(409, f"job '{job_id}' already {job['state']}")
        return {"id": job_id, "cancelling": eng.executor.cancel(job_id)}

    @app.get("/jobs/{job_id}/logs", dependencies=[Depends(auth)], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": _TEXT}, "description": "the worker's output so far"},
                        **error_responses(401, 404)})
    def logs(job_id: str) -> str:
        job_or_404(job_id)
        path = eng.executor.folder(job_id).log
        return path.read_text(errors="replace") if path.exists() else ""

    @app.get("/jobs/{job_id}/events", dependencies=[Depends(auth)], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                              "description": "server-sent events until the job ends (then `event: end`)"},
                        **error_responses(401, 404)})
    async def events(job_id: str) -> StreamingResponse:
        job_or_404(job_id)
        path = eng.executor.folder(job_id).events

        def read_from(offset: int) -> tuple[list[dict], int, str | None]:
            events, offset = read_new_events(path, offset)
            rec = eng.store.get(job_id)
            return events, offset, rec.state if rec else None

        async def stream():
            offset = 0
            while True:
                # File and database reads block: keep them off the event loop that serves every other client.
                events, offset, state = await asyncio.to_thread(read_from, offset)
                for ev in events:
                    yield f"data: {json.dumps(ev)}\n\n"
                if state is None or is_final(state):
                    yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/uploads", dependencies=[Depends(auth)], response_model=UploadResponse,
              responses=error_responses(400, 401, 413),
              openapi_extra={"requestBody": {"required": True, "description": "a zip archive", "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request) -> dict:
        """A zip archive as the request body -> a folder on the engine to pass as a job's `data`."""
        eng.uploads_dir.mkdir(parents=True, exist_ok=True)
        tmp = eng.uploads_dir / f".incoming-{uuid.uuid4().hex}"
        size = 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > eng.upload_limits.max_archive_bytes:
                        raise api_error(413, f"upload larger than {eng.upload_limits.max_archive_bytes} bytes")
                    fh.write(chunk)
            upload_id, folder = await asyncio.to_thread(extract_upload, tmp, eng.uploads_dir, eng.upload_limits)
        except UploadError as exc:
            raise api_error(400, str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
        return {"id": upload_id, "path": str(folder)}

    @app.get("/jobs/{job_id}/artifacts", dependencies=[Depends(auth)], response_model=list[ArtifactEntry],
             responses=error_responses(401, 404))
    def artifacts(job_id: str) -> list[dict]:
        job_or_404(job_id)
        root = eng.artifacts_dir(job_id)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [{"name": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
                for p in files]

    @app.get("/jobs/{job_id}/artifacts/{name:path}", dependencies=[Depends(auth)], response_class=FileResponse,
             responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}},
                              "description": "the file's bytes",
                              "headers": {"X-Checksum-SHA256": {"schema": {"type": "string"},
                                                                "description": "SHA-256 of the file, hex"}}},
                        **error_responses(401, 404)})
    def artifact(job_id: str, name: str) -> FileResponse:
        job_or_404(job_id)
        root = eng.artifacts_dir(job_id).resolve()
        try:
            path = layout.artifact_dir(eng.data_dir, job_id, name).resolve()
        except ValueError:  # "..", absolute, backslashes: no artifact can have that name
            raise api_error(404, f"no artifact '{name}' (artifact names stay inside the job's artifacts)") from None
        if not path.is_relative_to(root) or not path.is_file():  # symbolic links leaving the folder, too
            raise api_error(404, f"no artifact '{name}'")
        # One media type for every artifact: what the schema promises, whatever the file's extension.
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"X-Checksum-SHA256": sha256_file(path)})

    app.include_router(upload_router(eng, auth))
    app.openapi = lambda: exact_openapi(app)  # type: ignore[method-assign]
    return app


def exact_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without the 422s it adds to every route with parameters: only POST /jobs validates a body
    that can fail, and its 422 is declared with the engine's error body."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                answer = operation.get("responses", {}).get("422", {})
                if "HTTPValidationError" in json.dumps(answer):
                    del operation["responses"]["422"]
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = schema
    return app.openapi_schema
