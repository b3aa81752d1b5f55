"""The engine's data folder, composed here and only here; and job artifact references ("job:<id>/<name>").

DATA_DIR/
    engine.sqlite        the job store
    engine.lock          held by the one engine serving this folder
    token                the generated bearer token (mode 0600), when none was given
    tls/                 a self-signed certificate and its key
    uploads/<id>/        datasets sent by clients (committed: complete, never half-written)
    upload_store/        the content-addressed upload cache (engine.server.upload_store)
        blobs/<sha256>   verified file contents, named by their hash
        partial/<sha256> blobs still arriving (resumed after a restart, never published unverified)
        sessions/<id>.json  manifests of uploads not yet committed
        entries/<id>.json   bookkeeping of committed uploads (size, files, created, last used)
    jobs/<id>/           one job: job.json (the worker's spec), events.jsonl, log.txt, cancel (the flag)
        artifacts/<name> its outputs (a model folder, predictions, a report...)

The worker and the cluster driver know only their job's folder, so its files are reached through `JobFolder`.
Clients never compose these paths: a model an engine trained is named to it as `artifact_ref(job_id, "model")`,
which the engine resolves with `artifact_dir`; an uploaded folder is named `upload_ref(upload_id)` ("upload:<id>",
optionally "upload:<id>/<path inside>"), resolved with `upload_dir`. Kept free of FastAPI and sqlite imports: the GUI imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DATABASE = "engine.sqlite"
LOCK = "engine.lock"
TOKEN = "token"
TLS = "tls"
UPLOADS = "uploads"
UPLOAD_STORE = "upload_store"
JOBS = "jobs"
ARTIFACTS = "artifacts"
JOB_SPEC = "job.json"
EVENTS = "events.jsonl"
LOG = "log.txt"
CANCEL = "cancel"

ARTIFACT_REF_PREFIX = "job:"
UPLOAD_REF_PREFIX = "upload:"
# Upload ids: hex (content-addressed commits and zip uploads alike).
_UPLOAD_ID = re.compile(r"[0-9a-f]{8,64}")
# Job ids are the store's hex ids; the pattern is looser only so that an old or foreign id still parses.
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class JobFolder:
    """One job's folder and the files in it."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / JOB_SPEC

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def cancel_flag(self) -> Path:
        return self.path / CANCEL

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS


def default_data_dir(home: Path) -> Path:
    """The data folder of the local engine (the workbench's own, and `engine serve` without --data-dir)."""
    return Path(home) / "engine"


def database_file(data_dir: Path) -> Path:
    return Path(data_dir) / DATABASE


def lock_file(data_dir: Path) -> Path:
    return Path(data_dir) / LOCK


def token_file(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir) / TLS


def uploads_dir(data_dir: Path) -> Path:
    return Path(data_dir) / UPLOADS


def upload_dir(data_dir: Path, upload_id: str) -> Path:
    """A committed upload's folder."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return uploads_dir(data_dir) / upload_id


def upload_store_dir(data_dir: Path) -> Path:
    return Path(data_dir) / UPLOAD_STORE


@dataclass(frozen=True)
class UploadStoreFolder:
    """The upload cache's folders (engine.server.upload_store)."""

    path: Path

    @property
    def blobs(self) -> Path:
        return self.path / "blobs"

    @property
    def partial(self) -> Path:
        return self.path / "partial"

    @property
    def sessions(self) -> Path:
        return self.path / "sessions"

    @property
    def entries(self) -> Path:
        return self.path / "entries"


def upload_store_folder(data_dir: Path) -> UploadStoreFolder:
    return UploadStoreFolder(upload_store_dir(data_dir))


def upload_ref(upload_id: str, path: str = "") -> str:
    """How a client names an uploaded folder (or a file inside it, `path`) to the engine: "upload:<id>[/<path>]"."""
    if not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return f"{UPLOAD_REF_PREFIX}{upload_id}" + (f"/{_checked_name(path)}" if path else "")


def parse_upload_ref(text: str) -> tuple[str, str] | None:
    """(upload id, path inside, "" for the folder itself) of "upload:<id>[/<path>]"; None for anything else."""
    if not isinstance(text, str) or not text.startswith(UPLOAD_REF_PREFIX):
        return None
    upload_id, sep, path = text[len(UPLOAD_REF_PREFIX):].partition("/")
    if not _UPLOAD_ID.fullmatch(upload_id):
        return None
    if not sep:
        return upload_id, ""
    try:
        return upload_id, _checked_name(path)
    except ValueError:
        return None


def looks_like_upload_ref(text: object) -> bool:
    """Meant as an upload ref (a malformed one is refused as such, never taken for a relative path)."""
    return isinstance(text, str) and text.startswith(UPLOAD_REF_PREFIX)


def jobs_dir(data_dir: Path) -> Path:
    return Path(data_dir) / JOBS


def job_dir(data_dir: Path, job_id: str) -> Path:
    return jobs_dir(data_dir) / job_id


def job_folder(data_dir: Path, job_id: str) -> JobFolder:
    return JobFolder(job_dir(data_dir, job_id))


def artifacts_dir(data_dir: Path, job_id: str) -> Path:
    return job_folder(data_dir, job_id).artifacts


def artifact_dir(data_dir: Path, job_id: str, name: str) -> Path:
    """The artifact `name` (a folder such as "model", or a file such as "report.json") of a job."""
    return artifacts_dir(data_dir, job_id) / _checked_name(name)


def artifact_ref(job_id: str, name: str) -> str:
    """How a client names a job's artifact to the engine that made it: "job:<job_id>/<name>"."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{ARTIFACT_REF_PREFIX}{job_id}/{_checked_name(name)}"


def parse_artifact_ref(text: str) -> tuple[str, str] | None:
    """(job id, artifact name) of "job:<job_id>/<name>"; None for anything else, a malformed ref included."""
    if not isinstance(text, str) or not text.startswith(ARTIFACT_REF_PREFIX):
        return None
    job_id, sep, name = text[len(ARTIFACT_REF_PREFIX):].partition("/")
    if not sep or not _JOB_ID.fullmatch(job_id):
        return None
    try:
        return job_id, _checked_name(name)
    except ValueError:
        return None


def looks_like_artifact_ref(text: object) -> bool:
    """Meant as a ref (so a malformed one is refused as such, never taken for a relative path)."""
    return isinstance(text, str) and text.startswith(ARTIFACT_REF_PREFIX)


def _checked_name(name: str) -> str:
    """An artifact name stays inside the job's artifacts: relative, POSIX separators, no "..", nothing empty."""
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or name.startswith("/") or not parts or any(p in ("..", ".") for p in parts):
        raise ValueError(f"not an artifact name: {name!r}")
    return "/".join(parts)
