"""The GUI's one connection to the engine: a local engine process it owns, or a remote engine by URL + token.

Everything that touches the network, the engine process or the disk for the engine runs on a pool thread; the
results come back to the GUI thread through one app-lifetime relay (a queued signal), so the GUI thread never
waits on HTTP, a subprocess or a sleep. Results of a connection that has since been stopped or replaced (the
link's `generation` moved on) are dropped, and so are callbacks whose Qt owner has been deleted meanwhile.

States (`status_changed(state, detail)`):

* ``stopped``      no engine (before `start`, after `stop`, or the local engine exited; detail says why)
* ``starting``     the local engine is starting, or the first contact with a remote engine is under way
* ``connected``    GET /jobs works with our token; jobs are polled every second
* ``unreachable``  the engine does not answer; retried every few seconds until it does
* ``unauthorized`` the engine answered 401 to our token; not retried (the token must change)
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import httpx
import shiboken6
from PySide6.QtCore import (
    QCoreApplication,
    QObject,
    QSettings,
    QTimer,
    Signal,
)

from app.gui.tasks import background_executor, run_in_background
from engine.client import EngineClient
from engine.datasets.demo import default_data_home
from engine.errors import DefectScopeError
from engine.server import layout
from engine.server.store import FINAL_STATES

log = logging.getLogger(__name__)

Mode = Literal["local", "remote"]
STOPPED, STARTING, CONNECTED, UNREACHABLE, UNAUTHORIZED = (
    "stopped", "starting", "connected", "unreachable", "unauthorized")
ACTIVE_STATES = frozenset({"queued", "running"})

POLL_MS = 1000
RETRY_MS = 3000
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
REQUEST_TIMEOUT_S = 10.0  # control calls; a hung engine must not hold a pool thread for long
DOWNLOAD_TIMEOUT_S = 120.0
ENGINE_LOG = "engine.log"
ENGINE_LOG_MAX_BYTES = 5_000_000
DEFAULT_REMOTE_URL = "http://127.0.0.1:8765"


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class EngineSettings:
    mode: Mode = "local"
    url: str = DEFAULT_REMOTE_URL  # remote mode only; a local engine picks a free port
    token: str = ""
    tls_ca: str = ""  # certificate (file) to trust for an https engine, e.g. its self-signed cert.pem


def gui_settings() -> QSettings:
    """The GUI's ini file in the data home (so $DEFECTSCOPE_HOME isolates tests and portable installs)."""
    return QSettings(str(default_data_home() / "gui.ini"), QSettings.Format.IniFormat)


def load_settings() -> EngineSettings:
    s = gui_settings()
    mode = str(s.value("engine/mode", "local"))
    return EngineSettings(
        mode="remote" if mode == "remote" else "local",
        url=str(s.value("engine/url", DEFAULT_REMOTE_URL) or DEFAULT_REMOTE_URL),
        token=str(s.value("engine/token", "") or ""),
        tls_ca=str(s.value("engine/tls_ca", "") or ""),
    )


def save_settings(settings: EngineSettings) -> None:
    s = gui_settings()
    s.setValue("engine/mode", settings.mode)
    s.setValue("engine/url", settings.url)
    s.setValue("engine/token", settings.token)
    s.setValue("engine/tls_ca", settings.tls_ca)
    s.sync()
    # The file holds a bearer token: readable by this user only, like the engine's own token file.
    with contextlib.suppress(OSError):
        os.chmod(s.fileName(), 0o600)


class EngineUnauthorized(DefectScopeError):
    """The engine answered 401: our token is missing or wrong."""


class _LinkClient(EngineClient):
    """EngineClient that tells a refused token apart from every other failure (a typed error, not message text)."""

    def __init__(self, url: str, token: str | None, timeout: float = REQUEST_TIMEOUT_S,
                 verify: bool | str = True) -> None:
        super().__init__(url, token, timeout=timeout, verify=verify)
        self._http.event_hooks["response"] = [self._refuse_401]

    def _refuse_401(self, response: httpx.Response) -> None:
        if response.status_code == 401:
            raise EngineUnauthorized(f"engine at {self.url} refused the token (missing or wrong)")


class _PrefixClient(_LinkClient):
    """Lists only the artifacts under one folder, so the inherited `download` fetches (and verifies) just those."""

    def __init__(self, url: str, token: str | None, prefix: str, verify: bool | str = True) -> None:
        super().__init__(url, token, timeout=DOWNLOAD_TIMEOUT_S, verify=verify)
        self._prefix = prefix.strip("/") + "/"

    def artifacts(self, job_id: str) -> list[dict]:
        return [a for a in super().artifacts(job_id) if a["name"].startswith(self._prefix)]


# ----------------------------------------------------------------------------------- local engine process

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


class _Launch:
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


def _start_local_engine(launch: _Launch) -> tuple[str, str]:
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
        probe = _LinkClient(url, None, timeout=2.0)
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


def _probe(url: str, token: str, verify: bool | str) -> tuple[_LinkClient, list[dict]] | EngineUnauthorized:
    """Runs on a pool thread: a client for the engine and its job list (GET /jobs needs the token).

    A refused token is returned, not raised: the relay hands errors over as text, and this one decides the state.
    """
    client = _LinkClient(url, token or None, verify=verify)
    try:
        return client, client.jobs()
    except EngineUnauthorized as exc:
        client.close()
        return exc
    except BaseException:
        client.close()
        raise


def _poll(client: _LinkClient) -> list[dict] | EngineUnauthorized:
    try:
        return client.jobs()
    except EngineUnauthorized as exc:
        return exc


# ------------------------------------------------------------------------------------------------- the link


class EngineLink(QObject):
    """The only way the GUI talks to the engine. Create it on the GUI thread; every call returns at once.

    Signals:
        status_changed(state, detail): see the module docstring for the states; detail is one readable line.
        jobs_changed(list): every job (dicts as GET /jobs returns them), newest first, when anything changed.
        job_finished(dict): once per job that reached succeeded / failed / cancelled while the link watched.
        error(str): a fire-and-forget call (cancel without on_error) failed; one readable line.
    """

    status_changed = Signal(str, str)
    jobs_changed = Signal(list)
    job_finished = Signal(dict)
    error = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        background_executor()
        self._settings = EngineSettings()
        self._state = STOPPED
        self._detail = ""
        self._generation = 0
        self._launch: _Launch | None = None
        self._url = ""
        self._token = ""
        self._verify: bool | str = True
        self._client: _LinkClient | None = None
        self._jobs: list[dict] = []
        self._seen_final: set[str] | None = None  # None until the first job list after start()
        self._poll_in_flight = False
        self._probe_in_flight = False
        self._fetched: dict[tuple[str, str], Path] = {}
        self._poll_timer = QTimer(self)
        self._poll_timer.setInterval(POLL_MS)
        self._poll_timer.timeout.connect(self.refresh)
        self._retry_timer = QTimer(self)
        self._retry_timer.setSingleShot(True)
        self._retry_timer.setInterval(RETRY_MS)
        self._retry_timer.timeout.connect(self._reprobe)
        app = QCoreApplication.instance()
        if app is not None:
            # An engine this app started must not outlive it, whatever the main window remembers to do.
            app.aboutToQuit.connect(self.stop)

    # ------------------------------------------------------------------------------------------ properties

    @property
    def state(self) -> str:
        return self._state

    @property
    def detail(self) -> str:
        return self._detail

    @property
    def url(self) -> str:
        return self._url

    @property
    def is_local(self) -> bool:
        return self._settings.mode == "local"

    @property
    def settings(self) -> EngineSettings:
        return replace(self._settings)

    @property
    def jobs(self) -> list[dict]:
        """The last job list received (newest first)."""
        return list(self._jobs)

    @property
    def local_data_dir(self) -> Path:
        """Where a local engine keeps its database, job folders, token and engine.log."""
        return layout.default_data_dir(default_data_home())

    @property
    def engine_pid(self) -> int | None:
        """Process id of the local engine this link started (None: none running)."""
        proc = self._launch.proc if self._launch is not None else None
        return proc.pid if proc is not None and proc.poll() is None else None

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self, settings: EngineSettings | None = None) -> None:
        """Connect as `settings` say (default: the saved settings). Replaces any previous connection.

        A local engine this link already runs is kept when the new settings are local again; switching to a
        remote engine stops it.
        """
        settings = replace(settings) if settings is not None else load_settings()
        keep_local = settings.mode == "local" and self._launch is not None and self._launch.alive()
        self._disconnect(stop_engine=not keep_local)
        self._settings = settings
        self._seen_final = None
        if self._jobs:  # another engine's (or a stale) list must not stay on screen while connecting
            self._jobs = []
            self.jobs_changed.emit([])
        if settings.mode == "local":
            if keep_local and self._launch is not None:
                # Same engine, same token (it reads its token file once, at its start).
                self._url, self._verify = self._launch.url, True
                self._set_state(STARTING, f"connecting to the local engine at {self._url}")
                self._reprobe()
                return
            launch = self._launch = _Launch(self.local_data_dir)
            self._set_state(STARTING, "starting the local engine")
            run_in_background(lambda: _start_local_engine(launch), self._on_local_started, self._on_local_failed,
                              self._current_guard())
        else:
            self._url = settings.url.strip().rstrip("/")
            self._token = settings.token.strip()
            self._verify = settings.tls_ca or True
            self._set_state(STARTING, f"connecting to {self._url}")
            self._reprobe()

    def stop(self) -> None:
        """Stop polling and terminate the local engine this link started (SIGTERM, SIGKILL after a grace)."""
        if self._launch is None and self._client is None and self._state == STOPPED:
            return
        self._disconnect(stop_engine=True)
        self._set_state(STOPPED, "")

    def _disconnect(self, stop_engine: bool) -> None:
        self._generation += 1  # whatever is in flight for the old connection is dropped on arrival
        self._poll_timer.stop()
        self._retry_timer.stop()
        self._poll_in_flight = self._probe_in_flight = False
        client, self._client = self._client, None
        if client is not None:
            run_in_background(client.close)  # closing may wait on a request in flight on another thread
        if stop_engine and self._launch is not None:
            self._launch.abandon()
            self._launch = None

    def _current_guard(self) -> Callable[[], bool]:
        ref, generation = weakref.ref(self), self._generation

        def guard() -> bool:
            link = ref()
            return link is not None and shiboken6.isValid(link) and link._generation == generation

        return guard

    def _set_state(self, state: str, detail: str) -> None:
        if (state, detail) != (self._state, self._detail):
            self._state, self._detail = state, detail
            self.status_changed.emit(state, detail)

    def _on_local_started(self, url_token: tuple[str, str]) -> None:
        self._url, self._token = url_token
        self._verify = True
        self._reprobe()

    def _on_local_failed(self, message: str) -> None:
        if self._launch is not None:
            self._launch.abandon()
            self._launch = None
        self._set_state(STOPPED, message)

    # ------------------------------------------------------------------------------- probing and polling

    def _reprobe(self) -> None:
        if self._probe_in_flight:
            return
        self._probe_in_flight = True
        url, token, verify = self._url, self._token, self._verify
        run_in_background(lambda: _probe(url, token, verify), self._on_probe_ok, self._on_probe_failed,
                          self._current_guard())

    def _on_probe_ok(self, result: tuple[_LinkClient, list[dict]] | EngineUnauthorized) -> None:
        self._probe_in_flight = False
        if isinstance(result, EngineUnauthorized):
            self._unauthorized(result)
            return
        client, jobs = result
        old, self._client = self._client, client
        if old is not None:
            run_in_background(old.close)
        self._set_state(CONNECTED, self._url)
        self._apply_jobs(jobs)
        self._poll_timer.start()

    def _on_probe_failed(self, message: str) -> None:
        self._probe_in_flight = False
        self._connection_lost(message)

    def refresh(self) -> None:
        """Poll the job list now (the timer does it every second while connected)."""
        client = self._client
        if client is None or self._poll_in_flight or self._state != CONNECTED:
            return
        self._poll_in_flight = True
        run_in_background(lambda: _poll(client), self._on_jobs, self._on_poll_failed, self._current_guard())

    def _on_jobs(self, jobs: list[dict] | EngineUnauthorized) -> None:
        self._poll_in_flight = False
        if isinstance(jobs, EngineUnauthorized):  # e.g. the engine was restarted with another token
            self._unauthorized(jobs)
            return
        self._apply_jobs(jobs)

    def _unauthorized(self, exc: EngineUnauthorized) -> None:
        self._poll_timer.stop()
        self._set_state(UNAUTHORIZED, str(exc))

    def _on_poll_failed(self, message: str) -> None:
        self._poll_in_flight = False
        self._connection_lost(message)

    def _connection_lost(self, message: str) -> None:
        self._poll_timer.stop()
        launch = self._launch
        if self.is_local and launch is not None and launch.proc is not None and launch.proc.poll() is not None:
            code = launch.proc.returncode
            launch.abandon()
            self._launch = None
            self._set_state(STOPPED, f"the local engine exited (code {code}); its log: "
                                     f"{self.local_data_dir / ENGINE_LOG}")
            return
        self._set_state(UNREACHABLE, message)
        self._retry_timer.start()

    def _apply_jobs(self, jobs: list[dict]) -> None:
        jobs = sorted(jobs, key=lambda j: j.get("created") or 0.0, reverse=True)
        finished: list[dict] = []
        if self._seen_final is None:
            # Jobs already over when we connected are history, not news: no job_finished for them.
            self._seen_final = {j["id"] for j in jobs if j["state"] in FINAL_STATES}
        else:
            for job in jobs:
                if job["state"] in FINAL_STATES and job["id"] not in self._seen_final:
                    self._seen_final.add(job["id"])
                    finished.append(job)
        if jobs != self._jobs:
            self._jobs = jobs
            self.jobs_changed.emit(jobs)
        for job in reversed(finished):  # oldest first
            self.job_finished.emit(job)

    # ----------------------------------------------------------------------------------------- requests

    def _call(self, fn: Callable[[_LinkClient], Any], on_done: Callable[[Any], None] | None,
              on_error: Callable[[str], None] | None) -> None:
        client = self._client
        if client is None or self._state != CONNECTED:
            message = f"not connected to an engine ({self._state}{': ' + self._detail if self._detail else ''})"
            if on_error is not None:
                # Asynchronous like every other answer, so callers see one behaviour.
                QTimer.singleShot(0, lambda: on_error(message))
            else:
                self.error.emit(message)
            return
        run_in_background(lambda: fn(client), on_done, on_error or self.error.emit, self._current_guard())

    def submit(self, kind: str, params: dict[str, Any], on_done: Callable[[str], None] | None = None,
               on_error: Callable[[str], None] | None = None) -> None:
        """Submit a job; `on_done(job_id)` or `on_error(one_line)` on the GUI thread; the job list refreshes."""

        def done(job_id: str) -> None:
            self.refresh()
            if on_done is not None:
                on_done(job_id)

        self._call(lambda c: c.submit(kind, params), done, on_error)

    def cancel(self, job_id: str, on_done: Callable[[dict], None] | None = None,
               on_error: Callable[[str], None] | None = None) -> None:
        """Ask the engine to cancel a queued or running job; failures go to on_error, else the `error` signal."""

        def done(answer: dict) -> None:
            self.refresh()
            if on_done is not None:
                on_done(answer)

        self._call(lambda c: c.cancel(job_id), done, on_error)

    def fetch_logs(self, job_id: str, callback: Callable[[str], None],
                   on_error: Callable[[str], None] | None = None) -> None:
        """The job's whole log text (stdout and stderr of its worker)."""
        self._call(lambda c: c.logs(job_id), callback, on_error)

    def fetch_model(self, job: dict, callback: Callable[[Path], None],
                    on_error: Callable[[str], None] | None = None) -> None:
        """A local folder with the model (model.onnx + model.json) of a succeeded train_anomaly job."""
        self.fetch_artifact_dir(job, "model", callback, on_error)

    def fetch_artifact_dir(self, job: dict, prefix: str, callback: Callable[[Path], None],
                           on_error: Callable[[str], None] | None = None) -> None:
        """A local folder holding the job's artifacts under `prefix` ("model", "predictions", ...).

        Local engine: the folder inside the engine's job folder, as is (no copy). Remote engine: the artifacts
        are downloaded, each checked against the engine's SHA-256, into a staging folder that is renamed into
        place only when complete, so a cached folder is always whole; a second call returns the cache.
        """
        on_error = on_error or self.error.emit
        prefix = prefix.strip("/")
        job_id = str(job.get("id", ""))
        if job.get("state") != "succeeded":
            message = f"job {job_id} has no outputs to use: it is {job.get('state', 'unknown')}"
            QTimer.singleShot(0, lambda: on_error(message))
            return
        if self.is_local:
            path = self._local_artifact_dir(job, prefix)
            run_in_background(lambda: _existing_dir(path, job_id, prefix), callback, on_error)
            return
        dest = artifact_cache_dir(job_id, prefix)
        url, token, verify = self._url, self._token, self._verify
        if not url or self._state != CONNECTED:
            message = f"not connected to an engine ({self._state})"
            QTimer.singleShot(0, lambda: on_error(message))
            return

        def remember(path: Path) -> None:
            self._fetched[(job_id, prefix)] = path
            callback(path)

        run_in_background(lambda: _download_prefix(url, token, verify, job_id, prefix, dest), remember, on_error)

    def _local_artifact_dir(self, job: dict, prefix: str) -> Path:
        result = job.get("result") or {}
        if prefix == "model" and result.get("run_dir"):
            return Path(result["run_dir"])
        return layout.artifact_dir(self.local_data_dir, str(job["id"]), prefix)

    def known_artifact_dir(self, job: dict, prefix: str = "model") -> Path | None:
        """The local folder of a job's outputs when known without asking anyone (local engine, or fetched)."""
        if self.is_local and job.get("state") == "succeeded":
            return self._local_artifact_dir(job, prefix.strip("/"))
        return self._fetched.get((str(job.get("id")), prefix.strip("/")))


def artifact_cache_dir(job_id: str, prefix: str) -> Path:
    """Where artifacts of a remote job are kept: models/<job_id>/ for models, downloads/<job_id>/<prefix>/ else."""
    # The id comes from the engine's answer: only the engine's own id format may become a folder name.
    if not re.fullmatch(r"[0-9a-f]{6,64}", job_id) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", prefix):
        raise DefectScopeError(f"refusing job id {job_id!r} / artifact folder {prefix!r} from the engine")
    home = default_data_home()
    return home / "models" / job_id if prefix == "model" else home / "downloads" / job_id / prefix


def _existing_dir(path: Path, job_id: str, prefix: str) -> Path:
    if not path.is_dir():
        raise DefectScopeError(f"job {job_id}: its {prefix} folder {path} is missing")
    return path


def _download_prefix(url: str, token: str, verify: bool | str, job_id: str, prefix: str, dest: Path) -> Path:
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


def read_model_metadata(model_dir: Path) -> dict:
    """model.json (or multimodal.json, an RGB + 3D model) of a model folder (blocking: run it in the background)."""
    path = Path(model_dir) / "model.json"
    if (Path(model_dir) / "multimodal.json").is_file():
        path = Path(model_dir) / "multimodal.json"
    elif not (Path(model_dir) / "model.onnx").is_file():
        raise DefectScopeError(f"{model_dir}: no model.onnx in this folder")
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise DefectScopeError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise DefectScopeError(f"{path}: not valid JSON ({exc.msg})") from None
