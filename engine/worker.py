"""A job's worker process: runs one job and reports typed events as JSON lines in its job folder.

Started by the engine as `python -m engine.worker JOB_DIR` (or the frozen app's hidden `_worker` subcommand), so
a crash, a leak or a kill takes down only this process. Events: started, progress(value, message), heartbeat,
log(stream, line), artifact(name, size, sha256), done(result), failed(error, traceback), cancelled. Cancel is
cooperative first: the engine creates JOB_DIR/cancel and the next progress report stops the job; SIGTERM and
SIGKILL follow if it does not. A job whose job.json names the "ray" executor runs on a Ray cluster instead, with
this process as its driver (engine.cluster.driver).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from engine.server.layout import JobFolder

HEARTBEAT_S = 2.0
ENGINE_PID_ENV = "DEFECTSCOPE_ENGINE_PID"


def read_new_events(path: Path, offset: int) -> tuple[list[dict], int]:
    """Events appended to `path` since byte `offset`, and the new offset.

    A half-written last line (the worker is mid-write) is left for the next call.
    """
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    *complete, rest = data.split(b"\n")
    return [json.loads(raw) for raw in complete], offset + len(data) - len(rest)


class JobCancelled(Exception):
    pass


class EventWriter:
    def __init__(self, path: Path) -> None:
        self._fh = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, type_: str, **data: object) -> None:
        line = json.dumps({"t": time.time(), "type": type_, **data}, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()


class LogTee(io.TextIOBase):
    """stdout/stderr of the job, each line sent as a `log` event (and still written to `original`, e.g. log.txt).

    `events` is anything with `emit(type, **data)`: the event file here, the relay channel on a cluster node.
    """

    def __init__(self, events: Any, stream: str, original: TextIO | None) -> None:
        self.events = events
        self.stream = stream
        self.original = original
        self._buf = ""

    def write(self, text: str) -> int:
        if self.original is not None:
            self.original.write(text)
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self.events.emit("log", stream=self.stream, line=line)
        return len(text)

    def flush(self) -> None:
        if self.original is not None:
            self.original.flush()


def emit_artifacts(events: EventWriter, artifacts: Path) -> None:
    from engine.checksums import sha256_file

    for path in sorted(p for p in artifacts.rglob("*") if p.is_file()):
        events.emit("artifact", name=path.relative_to(artifacts).as_posix(), size=path.stat().st_size,
                    sha256=sha256_file(path))


def run_local(job_dir: Path, spec: dict, events: EventWriter) -> int:
    """The job in this process: the embedded executor's way."""
    from engine.errors import DefectScopeError
    from engine.jobs import run_job

    def progress(value: float, message: str) -> None:
        if JobFolder(job_dir).cancel_flag.exists():
            raise JobCancelled
        events.emit("progress", value=round(float(value), 4), message=message)

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = LogTee(events, "stdout", sys.stdout), LogTee(events, "stderr", sys.stderr)
    try:
        result = run_job(spec["kind"], spec["params"], progress)
    except JobCancelled:
        events.emit("cancelled")
        return 0
    except DefectScopeError as exc:
        events.emit("failed", error=str(exc), traceback=None)
        return 2
    except BaseException as exc:  # report everything, including MemoryError, before the process dies
        events.emit("failed", error=f"{exc.__class__.__name__}: {exc}", traceback=traceback.format_exc())
        return 1
    finally:
        sys.stdout, sys.stderr = saved
    emit_artifacts(events, JobFolder(job_dir).artifacts)
    events.emit("done", result=result)
    return 0


# How a job runs, by the executor named in its job.json; modules import lazily (Ray only when used).
RUNNERS: dict[str, str] = {
    "local": "engine.worker:run_local",
    "ray": "engine.cluster.driver:run_on_ray",
}


def run(job_dir: Path) -> int:
    folder = JobFolder(job_dir)
    spec = json.loads(folder.spec.read_text())
    if hasattr(os, "nice"):
        # Jobs saturate the CPU; the engine's API (and the GUI talking to it) must stay responsive meanwhile.
        os.nice(10)
    events = EventWriter(folder.events)
    events.emit("started", pid=os.getpid())
    stop = threading.Event()
    # The engine passes its pid: reading getppid() here would race with an engine that died while we started.
    engine_pid = int(os.environ.get(ENGINE_PID_ENV, os.getppid()))

    def heartbeat() -> None:
        while not stop.wait(0 if os.getppid() != engine_pid else HEARTBEAT_S):
            if os.getppid() != engine_pid:
                # The engine died (we were re-parented): nobody will collect this job; a restarted engine has
                # already marked it failed. Stop instead of burning the GPU for nothing.
                events.emit("failed", error="engine went away while the job was running", traceback=None)
                os._exit(3)
            events.emit("heartbeat")

    threading.Thread(target=heartbeat, daemon=True).start()
    module, func = RUNNERS[spec.get("executor", {}).get("kind", "local")].split(":")
    try:
        return getattr(importlib.import_module(module), func)(job_dir, spec, events)
    except Exception as exc:  # a runner's own failure (Ray missing, disk full) still ends the job with a reason
        from engine.errors import DefectScopeError

        tb = None if isinstance(exc, DefectScopeError) else traceback.format_exc()
        events.emit("failed", error=str(exc) if tb is None else f"{exc.__class__.__name__}: {exc}", traceback=tb)
        return 1
    finally:
        stop.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.worker JOB_DIR", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
