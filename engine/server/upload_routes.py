"""The content-addressed upload routes (protocol: engine.server.upload_store), every one behind the token.

    POST   /uploads/sessions                {"files": [{"path", "size", "sha256"}]} -> {"session", "missing", ...}
    GET    /uploads/blobs/{sha256}          -> {"sha256", "size", "received", "complete"} (where to resume)
    HEAD   /uploads/blobs/{sha256}          the same in the Upload-Offset header
    PUT    /uploads/blobs/{sha256}          a chunk, Content-Range: bytes START-END/TOTAL
    POST   /uploads/sessions/{id}/commit    -> {"id", "ref": "upload:<id>", "path", "bytes", "files"}
    GET    /uploads                         the cache: limit, use, eviction rule, uploads by last use
    DELETE /uploads/{id}                    one committed upload (409 while a queued or running job uses it)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from engine.server.errors import api_error, error_responses
from engine.server.upload_store import UploadRefused

if TYPE_CHECKING:
    from engine.server.api import Engine

# A chunk is held in memory while it is written: bounded so that a client cannot make the engine buffer gigabytes.
MAX_CHUNK_BYTES = 64 << 20
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class _HexConvertor(Convertor):
    """Upload ids are hex: "/uploads/sessions" is then no DELETE target, and 405 answers list only real methods."""

    regex = "[0-9a-f]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("hex", _HexConvertor())

# Declared in the schema, so a client (and a fuzzer) knows what the engine accepts before it asks.
Sha256 = Annotated[str, PathParam(pattern="^[0-9a-f]{64}$", description="SHA-256 of the content, lower-case hex")]
ContentRange = Annotated[str, Header(alias="Content-Range", pattern=r"^bytes \d+-\d+/\d+$",
                                     description="bytes START-END/TOTAL of this chunk")]


class ManifestEntry(BaseModel, extra="forbid"):
    path: str = Field(max_length=4096)
    size: int
    sha256: str = Field(max_length=64)


class SessionRequest(BaseModel, extra="forbid"):
    files: list[ManifestEntry]


def _refused(exc: UploadRefused) -> Exception:
    return api_error(exc.status, str(exc), exc.field)


def upload_router(eng: Engine, auth: Callable[..., None]) -> APIRouter:
    router = APIRouter(prefix="/uploads", dependencies=[Depends(auth)], tags=["uploads"])
    store = eng.upload_store

    @router.post("/sessions", responses=error_responses(401, 400, 413, 422))
    def open_session(req: SessionRequest) -> dict:
        """Announce the files of an upload; the answer lists the contents (by SHA-256) the engine lacks."""
        try:
            return store.open_session([f.model_dump() for f in req.files])
        except UploadRefused as exc:
            raise _refused(exc) from None

    @router.get("/blobs/{sha256}", responses=error_responses(401, 400, 404, 422))
    def blob_state(sha256: Sha256) -> dict:
        try:
            return store.blob_state(sha256)
        except UploadRefused as exc:
            raise _refused(exc) from None

    @router.head("/blobs/{sha256}", responses=error_responses(401, 400, 404, 422))
    def blob_head(sha256: Sha256) -> Response:
        try:
            state = store.blob_state(sha256)
        except UploadRefused as exc:
            raise _refused(exc) from None
        return Response(headers={"Upload-Offset": str(state["received"]), "Upload-Length": str(state["size"])})

    @router.put("/blobs/{sha256}", responses=error_responses(401, 400, 404, 409, 411, 413, 422),
                openapi_extra={"requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def put_chunk(sha256: Sha256, request: Request,
                        content_range: ContentRange) -> dict:
        """One chunk of a blob; the blob is verified against its SHA-256 when its last byte arrives."""
        m = _RANGE.fullmatch(content_range)
        if m is None:
            raise api_error(400, "Content-Range: expected 'bytes START-END/TOTAL'", "Content-Range")
        start, end, total = (int(g) for g in m.groups())
        if end - start + 1 > MAX_CHUNK_BYTES:
            raise api_error(413, f"Content-Range: chunks of at most {MAX_CHUNK_BYTES} bytes", "Content-Range")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > end - start + 1:
                raise api_error(400, f"body longer than Content-Range bytes {start}-{end}", "Content-Range")
        try:
            return await asyncio.to_thread(store.write_chunk, sha256, start, end, total, bytes(data))
        except UploadRefused as exc:
            raise _refused(exc) from None

    @router.post("/sessions/{session}/commit", responses=error_responses(401, 404, 409))
    def commit(session: str) -> dict:
        """Build the uploaded folder from its blobs, all at once; its ref names it in a job's parameters."""
        try:
            entry = store.commit(session)
        except UploadRefused as exc:
            raise _refused(exc) from None
        return {**entry.to_dict(), "path": str(store.resolve(entry.id))}

    @router.get("", responses=error_responses(401))
    def listing() -> dict:
        """The upload cache: its limit and use in bytes, the eviction rule, and each upload by last use."""
        return store.listing()

    @router.delete("/{upload_id:hex}", responses=error_responses(401, 404, 409))
    def delete(upload_id: str) -> dict:
        try:
            store.delete(upload_id)
        except UploadRefused as exc:
            raise _refused(exc) from None
        return {"id": upload_id, "deleted": True}

    return router
