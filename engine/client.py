"""Client of the engine's HTTP API: what the CLI, the GUI and scripts use to reach training.

Every failure is a DefectScopeError with one clear line: engine unreachable, token refused, a job or artifact
that does not exist, or the engine's own message for a rejected request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

from engine.errors import DefectScopeError, UploadCancelled
from engine.server.layout import artifact_ref, upload_ref
from engine.server.store import FINAL_STATES
from engine.upload_manifest import build_manifest


@dataclass(frozen=True)
class JobView:
    """A job as the engine reports it (GET /jobs/<id>): what clients read instead of the raw JSON."""

    id: str
    kind: str
    state: str  # queued, running, succeeded, failed, cancelled
    params: dict[str, Any] = field(default_factory=dict)  # validated: defaults filled, refs resolved, outputs
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    placement: str | None = None
    refs: dict[str, str] = field(default_factory=dict)  # path params given as "job:<id>/<artifact>"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobView:
        """From the engine's JSON; keys a newer engine adds are ignored, a missing id, kind or state is refused."""
        if not isinstance(data, Mapping):
            raise DefectScopeError(f"engine: a job should be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("id", "kind", "state") if k not in data]
        if missing:
            raise DefectScopeError(f"engine: job record without {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        # An older engine's record lacks refs; null where a value is expected reads as empty.
        for key, empty in (("params", {}), ("refs", {}), ("progress", 0.0), ("message", "")):
            if values.get(key) is None:
                values[key] = empty
        return cls(**{**values, "id": str(data["id"]), "kind": str(data["kind"]), "state": str(data["state"])})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def done(self) -> bool:
        """In a final state (succeeded, failed or cancelled): nothing about it changes any more."""
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    def artifact_ref(self, name: str = "model") -> str:
        """How to name this job's artifact `name` to the engine that ran it (e.g. a model to score with)."""
        return artifact_ref(self.id, name)


@dataclass(frozen=True)
class UploadResult:
    """What an upload did: the ref to pass as a path parameter, and how much really travelled."""

    ref: str  # "upload:<id>/<folder or file name>"
    id: str
    files: int
    bytes: int  # the folder's size
    blobs_sent: int  # contents the engine lacked (new or changed files)
    bytes_sent: int  # bytes sent this time (an interrupted upload's earlier part not counted)
    hashed_files: int  # files read to hash them (others' hashes came from the cache)
    seconds: float


UPLOAD_CHUNK_BYTES = 8 << 20
UPLOAD_RETRIES = 3


class EngineClient:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0, verify: bool | str = True) -> None:
        """verify: True (system CAs), or the path of a certificate to trust (an engine's self-signed cert.pem)."""
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise DefectScopeError(f"{verify}: cannot load the certificate to trust ({exc})") from None
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DefectScopeError(f"engine at {self.url} is unreachable ({exc.__class__.__name__}: {exc})") from None
        return self._checked(r)

    def _checked(self, r: httpx.Response) -> httpx.Response:
        if r.status_code == 401:
            raise DefectScopeError(f"engine at {self.url} refused the token (missing or wrong)")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except (ValueError, AttributeError):
                detail = r.text
            raise DefectScopeError(f"engine: {detail if isinstance(detail, str) else json.dumps(detail)}")
        return r

    def health(self) -> dict:
        return self._request("GET", "/health").json()

    def submit(self, kind: str, params: dict[str, Any]) -> str:
        return self._request("POST", "/jobs", json={"kind": kind, "params": params}).json()["id"]

    def jobs(self) -> list[JobView]:
        return [JobView.from_dict(j) for j in self._request("GET", "/jobs").json()]

    def job(self, job_id: str) -> JobView:
        return JobView.from_dict(self._request("GET", f"/jobs/{job_id}").json())

    def logs(self, job_id: str) -> str:
        return self._request("GET", f"/jobs/{job_id}/logs").text

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def artifacts(self, job_id: str) -> list[dict]:
        return self._request("GET", f"/jobs/{job_id}/artifacts").json()

    def download(self, job_id: str, dest: Path) -> list[Path]:
        """Every artifact of a job into `dest`, each verified against the engine's SHA-256."""
        written = []
        root = Path(dest).resolve()
        for art in self.artifacts(job_id):
            # Names come from the engine: a malicious or compromised one must not write outside `dest`.
            target = (root / str(art["name"])).resolve()
            if not target.is_relative_to(root) or target == root:
                raise DefectScopeError(f"artifact name {art['name']!r} of job {job_id} leaves the download folder")
            data = self._request("GET", f"/jobs/{job_id}/artifacts/{art['name']}").content
            if hashlib.sha256(data).hexdigest() != art["sha256"]:
                raise DefectScopeError(f"artifact {art['name']} of job {job_id}: checksum mismatch after download")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(target)
        return written

    def upload_folder(
        self, folder: Path, *, progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, chunk_size: int = UPLOAD_CHUNK_BYTES,
    ) -> str:
        """Upload a folder (or one file) to the engine; returns its ref, "upload:<id>/<name>" (the folder keeps its name), to pass as `data`/`model`.

        Only contents the engine lacks are sent (SHA-256 per file), in chunks; progress(bytes_done, bytes_total)
        after each; `cancel` set -> UploadCancelled at the next chunk boundary. An interrupted upload (cancel,
        dropped connection, killed client or engine) resumes where it stopped on the next call.
        """
        return self.upload(folder, progress=progress, cancel=cancel, chunk_size=chunk_size).ref

    def upload(
        self, folder: Path, *, progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None, chunk_size: int = UPLOAD_CHUNK_BYTES,
    ) -> UploadResult:
        """`upload_folder` with the figures: files, bytes, blobs and bytes really sent, seconds."""
        t0 = time.monotonic()
        manifest = build_manifest(folder)
        session = self._request("POST", "/uploads/sessions", json={"files": manifest.to_json()}).json()
        local = manifest.by_hash()
        partial: dict[str, int] = session.get("partial") or {}
        total = int(session["missing_bytes"])
        done = sum(partial.values())
        sent = 0
        if progress:
            progress(done, total)
        for sha in session["missing"]:
            f = local[sha]
            offset = int(partial.get(sha, 0))
            with f.local.open("rb") as fh:
                while offset < f.size:  # empty files never travel: the engine knows the empty content
                    if cancel is not None and cancel.is_set():
                        raise UploadCancelled(f"upload of {manifest.root} cancelled ({done} of {total} bytes sent; "
                                              "uploading again resumes there)")
                    fh.seek(offset)
                    data = fh.read(min(chunk_size, f.size - offset))
                    if len(data) != min(chunk_size, f.size - offset):
                        raise DefectScopeError(f"{f.local}: changed while being uploaded; upload again")
                    state = self._put_chunk(sha, offset, data, f.size)
                    sent += len(data)
                    done += int(state["received"]) - offset
                    offset = int(state["received"])
                    if progress:
                        progress(done, total)
        committed = self._request("POST", f"/uploads/sessions/{session['session']}/commit").json()
        # The ref names the folder (or file) inside the upload, under its own name (see build_manifest).
        ref = upload_ref(committed["id"], manifest.root.name)
        return UploadResult(ref, committed["id"], len(manifest.files), manifest.total_bytes,
                            len(session["missing"]), sent, manifest.hashed_files, time.monotonic() - t0)

    def _put_chunk(self, sha: str, offset: int, data: bytes, size: int) -> dict:
        """One chunk; a dropped connection is retried from the offset the engine then reports."""
        headers = {"Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{size}",
                   "Content-Type": "application/octet-stream"}
        for attempt in range(UPLOAD_RETRIES):
            try:
                r = self._http.request("PUT", f"/uploads/blobs/{sha}", content=data, headers=headers)
            except httpx.HTTPError as exc:
                if attempt == UPLOAD_RETRIES - 1:
                    raise DefectScopeError(f"engine at {self.url}: upload broke off ({exc.__class__.__name__}: "
                                           f"{exc}); uploading again resumes where it stopped") from None
                time.sleep(0.5 * (attempt + 1))
                with contextlib.suppress(DefectScopeError):
                    state = self._request("GET", f"/uploads/blobs/{sha}").json()
                    if state["complete"] or int(state["received"]) != offset:
                        return state  # the chunk did arrive (or more): go on from there
                continue
            return self._checked(r).json()
        raise AssertionError("unreachable")

    def uploads(self) -> list[dict]:
        """The engine's upload cache, least recently used first: id, ref, bytes, files, created, last_used,
        in_use."""
        return self.upload_cache()["uploads"]

    def upload_cache(self) -> dict:
        """The whole cache listing: limit_bytes, used_bytes, the eviction rule and the uploads."""
        return self._request("GET", "/uploads").json()

    def delete_upload(self, upload_id: str) -> None:
        self._request("DELETE", f"/uploads/{upload_id}")

    def events(self, job_id: str) -> Iterator[dict]:
        """The job's events as they happen (server-sent events), until the job ends."""
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/events", timeout=None) as r:
                if r.status_code >= 400:
                    self._request("GET", f"/jobs/{job_id}")  # raises the clear error
                for line in r.iter_lines():
                    if line.startswith("data: {\"t\""):
                        yield json.loads(line[6:])
        except httpx.HTTPError as exc:
            raise DefectScopeError(f"engine at {self.url}: event stream broke off ({exc})") from None

    def wait(self, job_id: str, timeout: float = 3600.0, poll: float = 0.5) -> JobView:
        """The job once it is done (any final state; check `.state`)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.done:
                return job
            if time.monotonic() > deadline:
                raise DefectScopeError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(poll)
