"""The engine side of a cluster job: submit it to Ray, relay its events, bring its artifacts home.

Runs inside the job's worker process, so the engine treats a cluster job like a local one: the same events file,
cancel flag, log and artifacts folder. The cluster is reached with `ray.init(address=...)`; a cluster started
with token authentication (RAY_AUTH_MODE=token) gets the token through RAY_AUTH_TOKEN, which the engine sets in
this process's environment only (never written to the job folder).
"""

from __future__ import annotations

import io
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

from engine.server.layout import JobFolder
from engine.worker import EventWriter, emit_artifacts

CANCEL_GRACE_S = 5.0
POLL_S = 0.3


def _fail(events: EventWriter, error: str, tb: str | None = None) -> int:
    events.emit("failed", error=error, traceback=tb)
    print(f"failed: {error}", flush=True)
    return 2


def _gpu_request(device: str, cluster_gpus: float) -> tuple[int, str] | str:
    """GPUs to reserve for the job and a note, or an error when it cannot be placed."""
    if device == "cpu":
        return 0, "running on a cluster CPU (asked for)"
    if cluster_gpus >= 1:
        return 1, "one cluster GPU reserved"
    if device == "cuda":
        return "the Ray cluster has no GPU, and the job asked for device 'cuda'"
    return 0, "no GPU in the Ray cluster: running on a cluster CPU"


def _extract(archive: bytes, dest: Path) -> None:
    """Unpack the node's outputs; member names are checked even though our own node wrote them."""
    root = dest.resolve()
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root) or info.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                while block := src.read(1 << 20):
                    out.write(block)


def _rehome(value: Any, prefix: str, local: str) -> Any:
    """Result paths under the node's scratch folder, rewritten to the engine's artifacts folder."""
    if isinstance(value, str) and value.startswith(prefix):
        return local + value[len(prefix):]
    if isinstance(value, dict):
        return {k: _rehome(v, prefix, local) for k, v in value.items()}
    if isinstance(value, list):
        return [_rehome(v, prefix, local) for v in value]
    return value


def run_on_ray(job_dir: Path, spec: dict, events: EventWriter) -> int:
    import ray

    import engine
    from engine.cluster.remote import EventChannel, run_remote_job
    from engine.jobs.registry import get_job_kind

    cfg = spec["executor"]
    address = cfg["address"]
    kind = get_job_kind(spec["kind"])
    params = {k: v for k, v in spec["params"].items() if k not in kind.outputs}
    try:
        ray.init(address=address, namespace="defectscope", log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
    except Exception as exc:  # ConnectionError, or an auth failure surfacing as RuntimeError
        return _fail(events, f"cannot reach the Ray cluster at {address}: {exc} "
                             "(check the address, and the token when the cluster uses token authentication)")
    try:
        placed = _gpu_request(params.get("device", "auto"), ray.cluster_resources().get("GPU", 0))
        if isinstance(placed, str):
            return _fail(events, placed)
        num_gpus, note = placed
        if num_gpus == 0 and params.get("device") == "auto":
            params["device"] = "cpu"
        events.emit("log", stream="engine", line=f"Ray cluster {address}: {note}")
        print(f"Ray cluster {address}: {note}", flush=True)
        channel = EventChannel.remote()
        task = ray.remote(run_remote_job).options(
            num_gpus=num_gpus, num_cpus=float(cfg.get("num_cpus", 1)), max_retries=0,
            name=f"defectscope-{spec['kind']}-{spec['id']}",
        )
        ref = task.remote(spec["kind"], params, kind.outputs, channel, engine.__version__)
        return _follow(job_dir, events, ray, ref, channel)
    finally:
        ray.shutdown()


def _follow(job_dir: Path, events: EventWriter, ray: Any, ref: Any, channel: Any) -> int:
    cancel_at: float | None = None

    def on_term(_sig: int, _frame: Any) -> None:
        # The engine escalates a cancel with SIGTERM: the cluster task must not outlive its driver.
        ray.cancel(ref, force=True)
        events.emit("cancelled")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)

    def relay() -> None:
        batch, dropped = ray.get(channel.drain.remote())
        for ev in batch:
            kind = ev.pop("type")
            ev.pop("t", None)
            if kind == "log":
                print(ev.get("line", ""), flush=True)  # log.txt, as for a local job
            elif kind == "started":
                kind, ev = "log", {"stream": "engine", "line": f"running on cluster node {ev.get('node')} "
                                                                f"(pid {ev.get('pid')}, GPUs {ev.get('gpus')})"}
                print(ev["line"], flush=True)
            events.emit(kind, **ev)
        if dropped:
            events.emit("log", stream="engine", line=f"{dropped} events dropped: the job logged faster than relayed")

    while True:
        done, _ = ray.wait([ref], timeout=POLL_S)
        relay()
        if done:
            break
        if cancel_at is None and JobFolder(job_dir).cancel_flag.exists():
            cancel_at = time.time()
            channel.request_cancel.remote()  # cooperative: the job stops at its next progress report
        elif cancel_at is not None and time.time() - cancel_at > CANCEL_GRACE_S:
            ray.cancel(ref, force=True)
            events.emit("cancelled")
            return 0
    try:
        out = ray.get(ref)
    except Exception as exc:  # the node died, the task was killed, the object was lost
        return _fail(events, f"the cluster task failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    relay()
    if out["state"] == "cancelled":
        events.emit("cancelled")
        return 0
    if out["state"] == "failed":
        return _fail(events, out["error"], out.get("traceback"))
    artifacts = JobFolder(job_dir).artifacts
    _extract(out["archive"], artifacts)
    emit_artifacts(events, artifacts)
    events.emit("done", result=_rehome(out["result"], out["artifacts_prefix"], str(artifacts)))
    return 0
