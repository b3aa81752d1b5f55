"""Local executor: each job in its own worker process; events from its JSON-lines file update the store.

The worker's outcome is read from its events, and its exit is checked too: a worker killed mid-job (SIGKILL,
out of memory) leaves no final event and its job is failed with the reason, while the engine keeps serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from engine.server import layout
from engine.server.gpus import GpuPool, Placement, detect_gpus
from engine.server.layout import JobFolder
from engine.server.store import FINAL_STATES, JobStore
from engine.worker import ENGINE_PID_ENV, read_new_events

CANCEL_GRACE_S = 5.0


def worker_command(job_dir: Path) -> list[str]:
    """The same program in worker mode; a PyInstaller-frozen app has no `-m`, so it uses a hidden subcommand."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "_worker", str(job_dir)]
    return [sys.executable, "-m", "engine.worker", str(job_dir)]


class LocalExecutor:
    def __init__(
        self, store: JobStore, data_dir: Path, max_concurrent: int = 1, gpu_pool: GpuPool | None = None
    ) -> None:
        self.store = store
        self.gpus = gpu_pool if gpu_pool is not None else GpuPool(detect_gpus())
        self._placements: dict[str, Placement] = {}
        self.data_dir = data_dir
        self.max_concurrent = max_concurrent
        self._queue: deque[str] = deque()
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._schedule, name="executor", daemon=True)
        self._thread.start()

    def folder(self, job_id: str) -> JobFolder:
        return layout.job_folder(self.data_dir, job_id)

    def submit(self, job_id: str, kind: str, params: dict) -> None:
        d = self.folder(job_id)
        d.artifacts.mkdir(parents=True, exist_ok=True)
        d.spec.write_text(json.dumps({"id": job_id, "kind": kind, "params": params}))
        with self._lock:
            self._queue.append(job_id)
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Cooperative flag now; SIGTERM after a grace period; SIGKILL after another."""
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.store.update(job_id, state="cancelled", finished=time.time(), message="cancelled before start")
                return True
            proc = self._procs.get(job_id)
        if proc is None:
            return False
        self.folder(job_id).cancel_flag.touch()
        threading.Thread(target=self._escalate, args=(job_id, proc), daemon=True).start()
        return True

    def shutdown(self) -> None:
        self._closed = True
        self._wake.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            p.terminate()

    def place(self, spec: dict) -> Placement | None:
        """Where the job runs (None: wait); may rewrite the spec the worker reads."""
        placement = self.gpus.acquire(spec["params"].get("device", "auto"))
        if placement is not None and "device" in spec["params"]:
            spec["params"]["device"] = placement.device
        return placement

    def worker_env(self, placement: Placement) -> dict[str, str]:
        return placement.env()

    def _escalate(self, job_id: str, proc: subprocess.Popen) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                proc.wait(CANCEL_GRACE_S)
                return
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
        self.store.update(job_id, message="cancel: worker killed")

    def _schedule(self) -> None:
        while not self._closed:
            self._wake.wait(0.5)
            self._wake.clear()
            while True:
                with self._lock:
                    if self._closed or not self._queue or len(self._procs) >= self.max_concurrent:
                        break
                    job_id = self._queue[0]
                    d = self.folder(job_id)
                    spec = json.loads(d.spec.read_text())
                    placement = self.place(spec)
                    if placement is None:  # every GPU is full: the job waits for one to free up
                        break
                    self._queue.popleft()
                    d.spec.write_text(json.dumps(spec))
                    log = d.log.open("ab")
                    proc = subprocess.Popen(worker_command(d.path), stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                 ENGINE_PID_ENV: str(os.getpid()), **self.worker_env(placement)})
                    log.close()
                    self._procs[job_id] = proc
                    self._placements[job_id] = placement
                self.store.update(job_id, state="running", started=time.time(), message=placement.note,
                                  placement=placement.note)
                threading.Thread(target=self._monitor, args=(job_id, proc), daemon=True).start()

    def _monitor(self, job_id: str, proc: subprocess.Popen) -> None:
        events_path = self.folder(job_id).events
        offset = 0
        final = None
        while True:
            exited = proc.poll() is not None
            offset, final = self._apply_events(job_id, events_path, offset, final)
            if exited:
                break
            time.sleep(0.2)
        offset, final = self._apply_events(job_id, events_path, offset, final)
        if final is None:
            cancelled = self.folder(job_id).cancel_flag.exists()
            code = proc.returncode
            if cancelled:
                self.store.update(job_id, state="cancelled", finished=time.time(), message="cancelled")
            else:
                reason = f"worker process died (exit code {code}{', killed by signal ' + str(-code) if code < 0 else ''})"
                self.store.update(job_id, state="failed", error=reason, finished=time.time(), message=reason)
        with self._lock:
            self._procs.pop(job_id, None)
            placement = self._placements.pop(job_id, None)
        if placement is not None:
            self.gpus.release(placement)
        self._wake.set()

    def _apply_events(self, job_id: str, path: Path, offset: int, final: str | None) -> tuple[int, str | None]:
        events, offset = read_new_events(path, offset)
        for ev in events:
            kind = ev["type"]
            if kind == "progress":
                self.store.update(job_id, progress=ev["value"], message=ev["message"])
            elif kind == "done":
                self.store.update(job_id, state="succeeded", progress=1.0, result=ev["result"],
                                  finished=time.time(), message="done")
                final = "succeeded"
            elif kind == "failed":
                self.store.update(job_id, state="failed", error=ev["error"], finished=time.time(),
                                  message="failed")
                final = "failed"
            elif kind == "cancelled":
                self.store.update(job_id, state="cancelled", finished=time.time(), message="cancelled")
                final = "cancelled"
        return offset, final


class RayExecutor(LocalExecutor):
    """Jobs on an existing Ray cluster: each job's worker process is its driver (engine.cluster.driver).

    Ray schedules GPUs across the cluster, so the engine's own GPU pool is not consulted; `max_concurrent` bounds
    how many jobs the engine keeps in flight on the cluster.
    """

    def __init__(
        self, store: JobStore, data_dir: Path, address: str, token: str | None = None, max_concurrent: int = 4,
        num_cpus: float = 1,
    ) -> None:
        self.address = address
        self.token = token
        self.num_cpus = num_cpus
        super().__init__(store, data_dir, max_concurrent, GpuPool([]))

    def place(self, spec: dict) -> Placement | None:
        spec["executor"] = {"kind": "ray", "address": self.address, "num_cpus": self.num_cpus}
        return Placement(spec["params"].get("device", "auto"), None, f"submitted to the Ray cluster at {self.address}")

    def worker_env(self, placement: Placement) -> dict[str, str]:
        # The driver must see the engine's GPUs as irrelevant and the cluster's token, nothing else.
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token} if self.token else {}


def is_final(state: str) -> bool:
    return state in FINAL_STATES
