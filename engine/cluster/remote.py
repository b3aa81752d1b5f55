"""What runs on the Ray cluster: the job itself, and the channel its events travel back through.

Cluster nodes import this module by name, so they need the same DefectScope version installed (checked at the
start of every job). Outputs are written to a scratch folder on the node and come back as one zip archive, so
the engine's artifact store holds them whether or not the cluster shares a file system with the engine.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

import ray

from engine.server.layout import JobFolder
from engine.worker import LogTee

MAX_BUFFERED_EVENTS = 10_000


@ray.remote(num_cpus=0)
class EventChannel:
    """A mailbox between the remote job and the engine-side driver; the driver drains it."""

    def __init__(self) -> None:
        self._events: list[dict] = []
        self._dropped = 0
        self._cancel = False

    def put(self, events: list[dict]) -> bool:
        room = MAX_BUFFERED_EVENTS - len(self._events)
        # A driver that stopped draining must not make the channel grow without bound: keep what fits, count the rest.
        self._events.extend(events[:max(room, 0)])
        self._dropped += max(len(events) - max(room, 0), 0)
        return self._cancel

    def drain(self) -> tuple[list[dict], int]:
        out, self._events = self._events, []
        dropped, self._dropped = self._dropped, 0
        return out, dropped

    def request_cancel(self) -> None:
        self._cancel = True


class _Outbox:
    """Batches events to the channel (one actor call per ~0.3 s, not one per log line)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.cancelled = False
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._last = 0.0

    def emit(self, type_: str, **data: Any) -> None:
        with self._lock:
            self._pending.append({"t": time.time(), "type": type_, **data})
        if time.time() - self._last > 0.3:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._last = time.time()
        if batch or not self.cancelled:
            self.cancelled = ray.get(self.channel.put.remote(batch)) or self.cancelled


class RemoteCancelled(Exception):
    pass


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def run_remote_job(
    kind_name: str, params: dict[str, Any], outputs: dict[str, str], channel: Any, version: str
) -> dict[str, Any]:
    """Run one job on this node; outputs (param -> path relative to artifacts) go to a scratch folder."""
    import engine
    from engine.jobs import run_job

    if engine.__version__ != version:
        raise RuntimeError(f"cluster node {os.uname().nodename} has DefectScope {engine.__version__}, "
                           f"the engine {version}: install the same version on every node")
    outbox = _Outbox(channel)
    scratch = Path(tempfile.mkdtemp(prefix="defectscope-job-"))
    artifacts = JobFolder(scratch).artifacts  # the scratch folder plays the job's folder on this node
    artifacts.mkdir()
    params = {**params, **{name: str(artifacts / rel) for name, rel in outputs.items()}}
    gpus = ray.get_gpu_ids()
    outbox.emit("started", node=os.uname().nodename, pid=os.getpid(), gpus=[str(g) for g in gpus])

    def progress(value: float, message: str) -> None:
        if outbox.cancelled:
            raise RemoteCancelled
        outbox.emit("progress", value=round(float(value), 4), message=message)

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = LogTee(outbox, "stdout", None), LogTee(outbox, "stderr", None)
    try:
        result = run_job(kind_name, params, progress)
        archive = _zip_folder(artifacts)
        # The driver rewrites result paths under this node-local prefix to the engine's artifacts folder.
        return {"state": "done", "result": result, "archive": archive, "artifacts_prefix": str(artifacts)}
    except RemoteCancelled:
        return {"state": "cancelled"}
    except Exception as exc:
        from engine.errors import DefectScopeError

        tb = None if isinstance(exc, DefectScopeError) else traceback.format_exc()
        return {"state": "failed", "error": f"{exc}" if tb is None else f"{exc.__class__.__name__}: {exc}",
                "traceback": tb}
    finally:
        sys.stdout, sys.stderr = saved
        outbox.flush()
        shutil.rmtree(scratch, ignore_errors=True)
