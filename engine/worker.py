"""A job's worker process: runs one job and reports typed events as JSON lines in its job folder.

Started by the engine as `python -m engine.worker JOB_DIR` (or the frozen app's hidden `_worker` subcommand), so
a crash, a leak or a kill takes down only this process. Events: started, progress(value, message), heartbeat,
done(result), failed(error, traceback), cancelled. Cancel is cooperative first: the engine creates
JOB_DIR/cancel and the next progress report stops the job; SIGTERM and SIGKILL follow if it does not.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "cancel"
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


def run(job_dir: Path) -> int:
    from engine.errors import DefectScopeError
    from engine.jobs import run_job

    spec = json.loads((job_dir / JOB_FILE).read_text())
    if hasattr(os, "nice"):
        # Jobs saturate the CPU; the engine's API (and the GUI talking to it) must stay responsive meanwhile.
        os.nice(10)
    events = EventWriter(job_dir / EVENTS_FILE)
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

    def progress(value: float, message: str) -> None:
        if (job_dir / CANCEL_FILE).exists():
            raise JobCancelled
        events.emit("progress", value=round(float(value), 4), message=message)

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
        stop.set()
    events.emit("done", result=result)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.worker JOB_DIR", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
