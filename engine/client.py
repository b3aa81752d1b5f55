"""Client of the engine's HTTP API: what the CLI, the GUI and scripts use to reach training.

Every failure is a DefectScopeError with one clear line: engine unreachable, token refused, a job or artifact
that does not exist, or the engine's own message for a rejected request.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

from engine.errors import DefectScopeError
from engine.server.layout import artifact_ref
from engine.server.store import FINAL_STATES


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
