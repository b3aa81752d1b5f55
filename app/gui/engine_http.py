"""The link's HTTP side: a client that tells a refused token apart, and verified downloads of job artifacts
into the local cache (a remote engine's outputs; a local engine's are read in place)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import httpx

from engine.client import EngineClient
from engine.errors import DefectScopeError
from engine.home import default_data_home

REQUEST_TIMEOUT_S = 10.0  # control calls; a hung engine must not hold a pool thread for long
DOWNLOAD_TIMEOUT_S = 120.0


class EngineUnauthorized(DefectScopeError):
    """The engine answered 401: our token is missing or wrong."""


class LinkClient(EngineClient):
    """EngineClient that tells a refused token apart from every other failure (a typed error, not message text)."""

    def __init__(self, url: str, token: str | None, timeout: float = REQUEST_TIMEOUT_S,
                 verify: bool | str = True) -> None:
        super().__init__(url, token, timeout=timeout, verify=verify)
        self._http.event_hooks["response"] = [self._refuse_401]

    def _refuse_401(self, response: httpx.Response) -> None:
        if response.status_code == 401:
            raise EngineUnauthorized(f"engine at {self.url} refused the token (missing or wrong)")


class _PrefixClient(LinkClient):
    """Lists only the artifacts under one folder, so the inherited `download` fetches (and verifies) just those."""

    def __init__(self, url: str, token: str | None, prefix: str, verify: bool | str = True) -> None:
        super().__init__(url, token, timeout=DOWNLOAD_TIMEOUT_S, verify=verify)
        self._prefix = prefix.strip("/") + "/"

    def artifacts(self, job_id: str) -> list[dict]:
        return [a for a in super().artifacts(job_id) if a["name"].startswith(self._prefix)]



def artifact_cache_dir(job_id: str, prefix: str) -> Path:
    """Where artifacts of a remote job are kept: models/<job_id>/ for models, downloads/<job_id>/<prefix>/ else."""
    # The id comes from the engine's answer: only the engine's own id format may become a folder name.
    if not re.fullmatch(r"[0-9a-f]{6,64}", job_id) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", prefix):
        raise DefectScopeError(f"refusing job id {job_id!r} / artifact folder {prefix!r} from the engine")
    home = default_data_home()
    return home / "models" / job_id if prefix == "model" else home / "downloads" / job_id / prefix


def existing_dir(path: Path, job_id: str, prefix: str) -> Path:
    if not path.is_dir():
        raise DefectScopeError(f"job {job_id}: its {prefix} folder {path} is missing")
    return path


def download_prefix(url: str, token: str, verify: bool | str, job_id: str, prefix: str, dest: Path) -> Path:
    """Runs on a pool thread: the artifacts under prefix/ into `dest` (verified), or the cached folder."""
    if dest.is_dir():
        return dest
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with _PrefixClient(url, token or None, prefix, verify=verify) as client:
            written = client.download(job_id, staging)
        if not written:
            raise DefectScopeError(f"job {job_id} has no artifacts under {prefix}/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            (staging / prefix).rename(dest)
        except OSError:
            if not dest.is_dir():  # another download finished first: use its (complete) folder
                raise
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
