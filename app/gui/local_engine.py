"""The local engine process the GUI owns: start it on a free port, wait for /health, read its token, and make
sure it never outlives the app (SIGTERM, then SIGKILL to its process group; an atexit reaper as last resort)."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from app.gui.engine_http import LinkClient
from engine.errors import DefectScopeError
from engine.server import layout

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
ENGINE_LOG = "engine.log"
ENGINE_LOG_MAX_BYTES = 5_000_000


_LIVE_ENGINES: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_command(port: int, data_dir: Path) -> list[str]:
    """`defectscope engine serve` as this program: a frozen app has no `-m`, it is the CLI itself."""
    # --parent-pid: the engine stops by itself if this app dies without stopping it (a crash, a kill).
    args = ["engine", "serve", "--port", str(port), "--data-dir", str(data_dir), "--parent-pid", str(os.getpid())]
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "app.cli", *args]


def _signal_engine(proc: subprocess.Popen, hard: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if sys.platform == "win32":
            if hard:
                proc.kill()
            else:
                proc.send_signal(signal.CTRL_BREAK_EVENT)  # its own process group receives it, not us
        elif hard:
            # The whole group: the engine and any job worker it could not stop (workers inherit the group).
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.terminate()  # graceful: the engine stops its workers and closes its database itself


def _reap(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the group after STOP_GRACE_S; runs on its own thread (it waits)."""
    try:
        if proc.poll() is None:
            _signal_engine(proc, hard=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE_S)
        _signal_engine(proc, hard=True)  # also catches workers left behind by an engine that did exit
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE_S)
    finally:
        with _LIVE_LOCK:
            _LIVE_ENGINES.discard(proc)


def _reap_in_background(proc: subprocess.Popen) -> None:
    # Not a daemon: the interpreter waits for it at exit, so quitting the app cannot leave the engine running.
    threading.Thread(target=_reap, args=(proc,), name="engine-reaper", daemon=False).start()


@atexit.register
def _reap_all_at_exit() -> None:
    """Last line of defence when the app exits without `stop()` (a script, a test that forgot it)."""
    with _LIVE_LOCK:
        procs = list(_LIVE_ENGINES)
    for proc in procs:
        _reap(proc)


class Launch:
    """A local engine being started / running; shared with the pool thread that starts it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.abandoned = False  # set by stop(): the starting thread must not leave a process behind
        self.url = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            proc, self.proc = self.proc, None
        if proc is not None:
            _reap_in_background(proc)


def _log_tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def start_local_engine(launch: Launch) -> tuple[str, str]:
    """Runs on a pool thread: spawn the engine, wait for /health, read its token. Returns (url, token)."""
    launch.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = launch.data_dir / ENGINE_LOG
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > ENGINE_LOG_MAX_BYTES:  # appended at every start: keep one old copy only
            log_path.replace(log_path.with_name(ENGINE_LOG + ".1"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not getattr(sys, "frozen", False):
        # `-m app.cli` must find this very source tree, also when the GUI was started from a checkout.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    for _attempt in range(3):  # a free port can be taken between choosing it and the engine binding it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log_fh:
            log_fh.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by the GUI on {url}\n".encode())
            log_fh.flush()
            kwargs: dict[str, Any] = (
                {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if sys.platform == "win32"
                else {"start_new_session": True})  # its own group: Ctrl+C in our terminal is not its business
            proc = subprocess.Popen(engine_command(port, launch.data_dir), stdin=subprocess.DEVNULL, stdout=log_fh,
                                    stderr=subprocess.STDOUT, env=env, **kwargs)
        with _LIVE_LOCK:
            _LIVE_ENGINES.add(proc)
        with launch.lock:
            if launch.abandoned:
                _reap_in_background(proc)
                raise DefectScopeError("local engine start was cancelled")
            launch.proc = proc
        probe = LinkClient(url, None, timeout=2.0)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline:
                if launch.abandoned:
                    raise DefectScopeError("local engine start was cancelled")
                code = proc.poll()
                if code is not None:
                    break
                try:
                    probe.health()
                except DefectScopeError:
                    time.sleep(0.2)
                    continue
                token_path = layout.token_file(launch.data_dir)
                try:
                    token = token_path.read_text().strip()
                except OSError as exc:
                    raise DefectScopeError(f"{token_path}: cannot read the local engine's token ({exc.strerror})") \
                        from None
                launch.url = url
                return url, token
            else:
                launch.abandon()
                raise DefectScopeError(f"local engine did not answer within {STARTUP_TIMEOUT_S:.0f} s "
                                       f"(log: {log_path})")
        finally:
            probe.close()
        tail = _log_tail(log_path, offset)
        with _LIVE_LOCK:
            _LIVE_ENGINES.discard(proc)
        with launch.lock:
            launch.proc = None
        if "address already in use" not in tail.lower():
            raise DefectScopeError(f"local engine exited with code {code}: {tail or 'no output'} (log: {log_path})")
    raise DefectScopeError(f"local engine could not find a free port (log: {log_path})")


