"""The GUI's one connection to the engine: a local engine process it owns, or a remote engine by URL + token.

Everything that touches the network, the engine process or the disk for the engine runs on a pool thread; the
results come back to the GUI thread through one app-lifetime relay (a queued signal), so the GUI thread never
waits on HTTP, a subprocess or a sleep. Results of a connection that has since been stopped or replaced (the
link's `generation` moved on) are dropped, and so are callbacks whose Qt owner has been deleted meanwhile.

About 600 lines on purpose: connecting, polling, submitting (with the uploads a remote engine needs) and fetching
results all hang on that one generation guard and connection state; settings, HTTP helpers and the local engine
process already live in their own modules (engine_settings, engine_http, local_engine).

States (`status_changed(state, detail)`):

* ``stopped``      no engine (before `start`, after `stop`, or the local engine exited; detail says why)
* ``starting``     the local engine is starting, or the first contact with a remote engine is under way
* ``connected``    GET /jobs works with our token; jobs are polled every second
* ``unreachable``  the engine does not answer; retried every few seconds until it does
* ``unauthorized`` the engine answered 401 to our token; not retried (the token must change)

Data travels, not paths: on a remote engine, `submit` first uploads every path parameter that names a folder of
this computer (app/gui/uploads.py) and the job names it by its "upload:<id>/<name>" reference; the uploads are listed
(`uploads_changed`) with their progress and can be cancelled, and a failed or cancelled upload submits nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import (
    QCoreApplication,
    QObject,
    QTimer,
    Signal,
)

from app.gui.engine_http import (
    EngineUnauthorized,
    LinkClient,
    artifact_cache_dir,
    download_prefix,
    existing_dir,
)
from app.gui.engine_settings import (  # noqa: F401  (re-exported: the link's settings, one import for callers)
    DEFAULT_REMOTE_URL,
    EngineSettings,
    Mode,
    gui_settings,
    load_settings,
    save_settings,
)
from app.gui.local_engine import ENGINE_LOG, Launch, engine_command, start_local_engine  # noqa: F401
from app.gui.tasks import background_executor, post_to_gui, run_in_background
from app.gui.uploads import (
    CANCELLED,
    FAILED,
    SENT,
    Upload,
    count_files,
    local_folders,
    send_folder,
    with_refs,
)
from engine.client import JobView
from engine.errors import DefectScopeError
from engine.home import default_data_home
from engine.jobs.registry import job_kinds, model_output
from engine.server import layout
from engine.server.layout import artifact_dir, artifact_ref

log = logging.getLogger(__name__)

STOPPED, STARTING, CONNECTED, UNREACHABLE, UNAUTHORIZED = (
    "stopped", "starting", "connected", "unreachable", "unauthorized")
ACTIVE_STATES = frozenset({"queued", "running"})

POLL_MS = 1000
RETRY_MS = 3000
UPLOAD_PROGRESS_S = 0.1  # at most this often per upload: a fast link must not flood the GUI thread
UPLOAD_TIMEOUT_S = 120.0  # per request (one chunk); the upload as a whole may take as long as it needs


def _probe(url: str, token: str, verify: bool | str) -> tuple[LinkClient, list[JobView]] | EngineUnauthorized:
    """Runs on a pool thread: a client for the engine and its job list (GET /jobs needs the token).

    A refused token is returned, not raised: the relay hands errors over as text, and this one decides the state.
    """
    client = LinkClient(url, token or None, verify=verify)
    try:
        return client, client.jobs()
    except EngineUnauthorized as exc:
        client.close()
        return exc
    except BaseException:
        client.close()
        raise


def _poll(client: LinkClient) -> list[JobView] | EngineUnauthorized:
    try:
        return client.jobs()
    except EngineUnauthorized as exc:
        return exc


# ------------------------------------------------------------------------------------------------- the link


class EngineLink(QObject):
    """The only way the GUI talks to the engine. Create it on the GUI thread; every call returns at once.

    Signals:
        status_changed(state, detail): see the module docstring for the states; detail is one readable line.
        jobs_changed(list): every job (JobView), newest first, when anything changed.
        job_finished(JobView): once per job that reached succeeded / failed / cancelled while the link watched,
            after the `on_finished` callback that job was submitted with (if any).
        error(str): a fire-and-forget call (cancel without on_error) failed; one readable line.
        uploads_changed(list): the uploads under way (Upload records), whenever one starts, moves or ends.
    """

    status_changed = Signal(str, str)
    jobs_changed = Signal(list)
    job_finished = Signal(object)  # JobView
    error = Signal(str)
    uploads_changed = Signal(list)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        background_executor()
        self._settings = EngineSettings()
        self._state = STOPPED
        self._detail = ""
        self._generation = 0
        self._launch: Launch | None = None
        self._url = ""
        self._token = ""
        self._verify: bool | str = True
        self._client: LinkClient | None = None
        self._jobs: list[JobView] = []
        # Completion callbacks of jobs this link submitted, by job id: each job's outcome goes to its own
        # submitter, so no window has to keep per-kind sets of pending ids.
        self._on_finished: dict[str, Callable[[JobView], None]] = {}
        self._seen_final: set[str] | None = None  # None until the first job list after start()
        self._poll_in_flight = False
        self._probe_in_flight = False
        self._fetched: dict[tuple[str, str], Path] = {}
        self._uploads: list[Upload] = []
        # What each job submitted here was sent from: job id -> {param: local folder} (its "upload:" refs).
        self._sources: dict[str, dict[str, Path]] = {}
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
    def jobs(self) -> list[JobView]:
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
            launch = self._launch = Launch(self.local_data_dir)
            self._set_state(STARTING, "starting the local engine")
            run_in_background(lambda: start_local_engine(launch), self._on_local_started, self._on_local_failed,
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
        if self._uploads:  # they were for the old connection: stop them (their answers are dropped anyway)
            for upload in self._uploads:
                upload.cancel.set()
            self._uploads = []
            self.uploads_changed.emit([])
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

    def _on_probe_ok(self, result: tuple[LinkClient, list[JobView]] | EngineUnauthorized) -> None:
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

    def _on_jobs(self, jobs: list[JobView] | EngineUnauthorized) -> None:
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

    def _apply_jobs(self, jobs: list[JobView]) -> None:
        jobs = sorted(jobs, key=lambda j: j.created or 0.0, reverse=True)
        finished: list[JobView] = []
        if self._seen_final is None:
            # Jobs already over when we connected are history, not news: no job_finished for them, except those
            # submitted here whose outcome arrived while the connection was being replaced.
            self._seen_final = {j.id for j in jobs if j.done}
            finished = [j for j in jobs if j.done and j.id in self._on_finished]
        else:
            for job in jobs:
                if job.done and job.id not in self._seen_final:
                    self._seen_final.add(job.id)
                    finished.append(job)
        if jobs != self._jobs:
            self._jobs = jobs
            self.jobs_changed.emit(jobs)
        for job in reversed(finished):  # oldest first
            callback = self._on_finished.pop(job.id, None)
            if callback is not None:
                _deliver(callback, job)
            self.job_finished.emit(job)

    # ----------------------------------------------------------------------------------------- requests

    def _call(self, fn: Callable[[LinkClient], Any], on_done: Callable[[Any], None] | None,
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
               on_error: Callable[[str], None] | None = None,
               on_finished: Callable[[JobView], None] | None = None) -> None:
        """Submit a job; `on_done(job_id)` or `on_error(one_line)` on the GUI thread; the job list refreshes.

        `on_finished(job)` runs once on the GUI thread when that job reaches a final state (succeeded, failed or
        cancelled), before `job_finished` is emitted for it: the submitter handles its own outcome.

        On a remote engine, local folders among the job's path parameters are uploaded first (see the module
        docstring); a failed or cancelled upload reaches `on_error` and nothing is submitted.
        """
        report = on_error or self.error.emit
        sources: dict[str, Path] = {}

        def done(job_id: str) -> None:
            if on_finished is not None:
                self._on_finished[job_id] = on_finished
            if sources:
                self._sources[job_id] = sources
            self.refresh()
            if on_done is not None:
                on_done(job_id)

        if self.is_local:
            self._call(lambda c: c.submit(kind, params), done, on_error)
            return
        try:
            params, send = local_folders(kind, params, self._download_ref)
        except DefectScopeError as exc:
            message = str(exc)
            QTimer.singleShot(0, lambda: report(message))
            return
        if not send or self._client is None or self._state != CONNECTED:
            # Nothing to send, or no engine to send it to (the call answers "not connected" as usual).
            self._call(lambda c: c.submit(kind, params), done, on_error)
            return
        sources.update(send)
        cancel = threading.Event()
        uploads = [Upload(kind, name, folder, cancel) for name, folder in send.items()]
        self._uploads.extend(uploads)
        self.uploads_changed.emit(self.uploads)

        def sent(refs: dict[str, str]) -> None:
            self._end_uploads(uploads, SENT)
            self._call(lambda c: c.submit(kind, with_refs(params, refs)), done, on_error)

        def failed(message: str) -> None:
            self._end_uploads(uploads, CANCELLED if cancel.is_set() else FAILED)
            report(message)

        url, token, verify, guard = self._url, self._token, self._verify, self._current_guard()
        run_in_background(lambda: self._send(url, token, verify, uploads, guard), sent, failed, guard)

    @property
    def uploads(self) -> list[Upload]:
        """The uploads under way, oldest first."""
        return list(self._uploads)

    def cancel_upload(self, upload_id: str) -> None:
        """Stop an upload at its next chunk; the job it was for is not submitted (nor its other uploads)."""
        for upload in self._uploads:
            if upload.id == upload_id:
                upload.cancel.set()

    def local_source(self, job: JobView, param: str) -> Path | None:
        """The folder of this computer a job's path parameter was uploaded from (jobs submitted here), else None.

        The engine reports its own folder of the upload (job.params); results that name it (scores, proposals)
        are about this local folder.
        """
        return self._sources.get(job.id, {}).get(param)

    def _send(self, url: str, token: str, verify: bool | str, uploads: list[Upload],
              guard: Callable[[], bool]) -> dict[str, str]:
        """Runs on a pool thread: each folder to the engine, in turn; {slot: "upload:<id>/<name>"}."""
        refs: dict[str, str] = {}
        with LinkClient(url, token or None, timeout=UPLOAD_TIMEOUT_S, verify=verify) as client:
            for upload in uploads:
                files = count_files(upload.folder)
                post_to_gui(lambda n, u=upload: self._upload_moved(u, files=n), files, guard)
                last = 0.0

                def progress(done: int, total: int, u: Upload = upload) -> None:
                    nonlocal last
                    now = time.monotonic()
                    if now - last >= UPLOAD_PROGRESS_S or done >= total:
                        last = now
                        post_to_gui(lambda dt, u=u: self._upload_moved(u, *dt), (done, total), guard)

                refs[upload.param] = send_folder(client, upload, progress)
        return refs

    def _upload_moved(self, upload: Upload, done: int | None = None, total: int | None = None,
                      files: int | None = None) -> None:
        if upload not in self._uploads:
            return
        if files is not None:
            upload.files = files
        if done is not None and total is not None:
            upload.bytes_done, upload.bytes_total, upload.sized = done, total, True
        self.uploads_changed.emit(self.uploads)

    def _end_uploads(self, uploads: list[Upload], state: str) -> None:
        for upload in uploads:
            upload.state = state
        self._uploads = [u for u in self._uploads if u not in uploads]
        self.uploads_changed.emit(self.uploads)

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

    def fetch_model(self, job: JobView, callback: Callable[[Path], None],
                    on_error: Callable[[str], None] | None = None) -> None:
        """A local folder with the scoring model of a succeeded job whose kind declares a model output."""
        self.fetch_artifact_dir(job, model_output(job.kind) or "model", callback, on_error)

    def fetch_artifact_dir(self, job: JobView, prefix: str, callback: Callable[[Path], None],
                           on_error: Callable[[str], None] | None = None) -> None:
        """A local folder holding the job's artifacts under `prefix` ("model", "predictions", ...).

        Local engine: the folder inside the engine's job folder, as is (no copy). Remote engine: the artifacts
        are downloaded, each checked against the engine's SHA-256, into a staging folder that is renamed into
        place only when complete, so a cached folder is always whole; a second call returns the cache.
        """
        on_error = on_error or self.error.emit
        prefix = prefix.strip("/")
        job_id = job.id
        if job.state != "succeeded":
            message = f"job {job_id} has no outputs to use: it is {job.state}"
            QTimer.singleShot(0, lambda: on_error(message))
            return
        if self.is_local:
            path = self._local_artifact_dir(job, prefix)
            run_in_background(lambda: existing_dir(path, job_id, prefix), callback, on_error)
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

        run_in_background(lambda: download_prefix(url, token, verify, job_id, prefix, dest), remember, on_error)

    def _local_artifact_dir(self, job: JobView, prefix: str) -> Path:
        result = job.result or {}
        if prefix == model_output(job.kind) and result.get("run_dir"):
            return Path(result["run_dir"])
        return artifact_dir(self.local_data_dir, job.id, prefix)

    def known_artifact_dir(self, job: JobView, prefix: str = "model") -> Path | None:
        """The local folder of a job's outputs when known without asking anyone (local engine, or fetched)."""
        if self.is_local and job.state == "succeeded":
            return self._local_artifact_dir(job, prefix.strip("/"))
        return self._fetched.get((job.id, prefix.strip("/")))

    def engine_path(self, folder: Path, prefix: str = "model") -> str:
        """How to name a local folder of job outputs to this engine (a job parameter such as `model`).

        A local engine reads this computer's disk: the path itself. On a remote engine a folder that came from
        one of its jobs is named by that job's artifact ref (job:<id>/<prefix>), never by the download cache's
        path; any other folder is given as it is, and `submit` uploads it.
        """
        folder = Path(folder)
        if self.is_local:
            return str(folder)
        return self.artifact_ref_for(folder, prefix) or self._download_ref(folder) or str(folder)

    def _download_ref(self, folder: Path) -> str | None:
        """job:<id>/<artifact> when `folder` is any output of this engine's jobs downloaded here, else None."""
        for (job_id, name), path in self._fetched.items():
            if _same_path(path, folder):
                return artifact_ref(job_id, name)
        kinds = job_kinds()
        for job in self._jobs:
            spec = kinds.get(job.kind)
            if job.state != "succeeded" or spec is None:
                continue
            for name in dict.fromkeys(spec.outputs.values()):
                try:
                    cached = artifact_cache_dir(job.id, name)
                except DefectScopeError:  # not a folder name the cache uses (e.g. a report file)
                    continue
                if _same_path(cached, folder):
                    return artifact_ref(job.id, name)
        return None

    def artifact_ref_for(self, folder: Path, prefix: str = "model") -> str | None:
        """job:<id>/<prefix> when `folder` is this engine's job output downloaded here, else None."""
        for (job_id, name), path in self._fetched.items():
            if name == prefix and _same_path(path, folder):
                return artifact_ref(job_id, name)
        for job in self._jobs:  # downloaded in an earlier session: the cache folder names the job
            if job.state == "succeeded" and _same_path(artifact_cache_dir(job.id, prefix), folder):
                return artifact_ref(job.id, prefix)
        return None


def _same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _deliver(callback: Callable[[JobView], None], job: JobView) -> None:
    """A submitter's callback must not stop the others (or the job_finished signal) from getting the news."""
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, QObject) and not shiboken6.isValid(owner):
        return  # e.g. a controller of a window closed meanwhile
    try:
        callback(job)
    except Exception:
        log.exception("on_finished callback of job %s failed", job.id)
