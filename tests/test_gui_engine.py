"""The GUI's engine connection with real parts: EngineLink starts a real local engine process, jobs train and
get cancelled from the JobsPanel, models show in the ModelsPanel, remote mode meets wrong tokens and dead ports.

Screenshots go to $DEFECTSCOPE_TEST_ARTIFACTS/engine when set (else the test's tmp_path) for a human look.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

import psutil
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox

from app.gui.engine_link import EngineLink, EngineSettings, load_settings, save_settings
from app.gui.job_dialog import EngineSettingsDialog, EvalDialog, TrainDialog
from app.gui.jobs_panel import COL_MESSAGE, COL_PROGRESS, COL_STATE, JobRole, JobsPanel, ProgressRole
from app.gui.models_panel import ModelsPanel
from engine.client import JobView
from engine.home import default_data_home
from tests.conftest import DEMO_CATEGORY

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"category": DEMO_CATEGORY, "image_size": 128, "bank_size": 256, "device": "cpu"}


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("DEFECTSCOPE_TEST_ARTIFACTS")
    out = Path(root) / "engine" if root else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data home of this test's own: the session-wide isolated home would carry gui.ini and jobs across tests."""
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def links():
    """Every EngineLink a test makes is stopped at its end, whatever happened."""
    made: list[EngineLink] = []

    def make() -> EngineLink:
        made.append(EngineLink())
        return made[-1]

    yield make
    for link in made:
        link.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state_of(panel: JobsPanel, job_id: str) -> str | None:
    row = panel.model.row_of(job_id)
    return panel.model.index(row, COL_STATE).data() if row >= 0 else None


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _submit(qtbot, link: EngineLink, kind: str, params: dict) -> str:
    ids: list[str] = []
    errors: list[str] = []
    link.submit(kind, params, ids.append, errors.append)
    qtbot.waitUntil(lambda: bool(ids or errors), timeout=10_000)
    assert not errors, errors
    return ids[0]


def test_local_engine_trains_cancels_lists_models_and_stops(qtbot, home, links, demo_data, artifacts):
    t0 = time.monotonic()
    link = links()
    jobs_panel, models_panel = JobsPanel(link), ModelsPanel(link)
    for w, size in ((jobs_panel, (1100, 620)), (models_panel, (520, 360))):
        qtbot.addWidget(w)
        w.resize(*size)
        w.show()
    finished: list[dict] = []
    link.job_finished.connect(finished.append)

    t = time.monotonic()
    link.start(EngineSettings(mode="local"))
    assert link.state == "starting" and time.monotonic() - t < 0.5  # the engine comes up in the background
    qtbot.waitUntil(lambda: link.state == "connected", timeout=60_000)
    pid = link.engine_pid
    assert pid is not None and link.is_local and link.url.startswith("http://127.0.0.1:")
    assert "connected" in jobs_panel.status_label.text()
    t_started = time.monotonic() - t0

    # a job that fails at once: its error shows in red, in the message column and its tooltip
    bad_id = _submit(qtbot, link, "eval", {"model": str(demo_data / "no-such-model"), "data": str(demo_data)})
    # the job to train, then select it to follow its log while it runs
    train_id = _submit(qtbot, link, "train_anomaly", {"data": str(demo_data), **TRAIN})
    qtbot.waitUntil(lambda: jobs_panel.model.row_of(train_id) >= 0, timeout=5_000)
    assert jobs_panel.select_job(train_id)
    qtbot.waitUntil(lambda: _state_of(jobs_panel, bad_id) == "failed", timeout=30_000)
    bad_row = jobs_panel.model.row_of(bad_id)
    message = jobs_panel.model.index(bad_row, COL_MESSAGE)
    assert "does not exist" in message.data() and "does not exist" in message.data(Qt.ItemDataRole.ToolTipRole)
    assert message.data(Qt.ItemDataRole.ForegroundRole).red() > 150

    qtbot.waitUntil(lambda: _state_of(jobs_panel, train_id) == "running", timeout=30_000)
    qtbot.waitUntil(lambda: 0 < jobs_panel.model.index(jobs_panel.model.row_of(train_id), COL_PROGRESS)
                    .data(ProgressRole) < 1, timeout=60_000)
    assert jobs_panel.cancel_button.isEnabled()  # the selected job is running
    qtbot.waitUntil(lambda: _state_of(jobs_panel, train_id) in ("succeeded", "failed"), timeout=180_000)
    row = jobs_panel.model.row_of(train_id)
    job = jobs_panel.model.index(row, COL_PROGRESS).data(JobRole)
    assert job.state == "succeeded", job
    assert jobs_panel.model.index(row, COL_PROGRESS).data(ProgressRole) == 1.0
    assert jobs_panel.model.index(row, 0).data() == train_id and row == 0  # newest first
    assert not jobs_panel.cancel_button.isEnabled()
    assert jobs_panel.selected_job().id == train_id  # the selection survived a minute of polling
    qtbot.waitUntil(lambda: "succeeded" in jobs_panel.log_view.toPlainText(), timeout=10_000)
    log_text = jobs_panel.log_view.toPlainText()
    # training prints little: the pane shows its progress messages (which ones depends on when polls land)
    assert train_id in jobs_panel.log_title.text() and "running" in log_text, log_text
    bar = jobs_panel.log_view.verticalScrollBar()
    assert bar.value() == bar.maximum()  # followed the end
    qtbot.waitUntil(lambda: {j.id for j in finished} == {bad_id, train_id}, timeout=5_000)
    assert {j.id: j.state for j in finished} == {bad_id: "failed", train_id: "succeeded"}
    t_trained = time.monotonic() - t0

    # the model is listed with its metadata, and using it hands over a folder with model.onnx
    qtbot.waitUntil(lambda: bool(models_panel.tree.findItems(
        train_id, Qt.MatchFlag.MatchContains | Qt.MatchFlag.MatchRecursive)), timeout=5_000)
    item = models_panel.tree.findItems(train_id, Qt.MatchFlag.MatchContains | Qt.MatchFlag.MatchRecursive)[0]
    assert item.text(0).startswith(DEMO_CATEGORY)
    assert "efficientnet-lite0" in item.toolTip(0) and "image size: 128" in item.toolTip(0)
    models_panel.tree.setCurrentItem(item)
    with qtbot.waitSignal(models_panel.model_activated, timeout=10_000) as activated:
        qtbot.mouseClick(models_panel.use_button, Qt.MouseButton.LeftButton)
    model_dir = activated.args[0]
    assert (model_dir / "model.onnx").is_file() and model_dir in models_panel.models()
    assert model_dir == Path(job.result["run_dir"])  # local engine: its own folder, no copy

    # a second training job, cancelled from the panel's button while it runs
    cancel_id = _submit(qtbot, link, "train_anomaly", {"data": str(demo_data), **TRAIN})
    qtbot.waitUntil(lambda: _state_of(jobs_panel, cancel_id) == "running", timeout=30_000)
    assert jobs_panel.select_job(cancel_id)
    qtbot.waitUntil(jobs_panel.cancel_button.isEnabled, timeout=2_000)
    qtbot.mouseClick(jobs_panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: _state_of(jobs_panel, cancel_id) == "cancelled", timeout=30_000)
    assert not jobs_panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: cancel_id in {j.id for j in finished}, timeout=5_000)
    jobs_panel.grab().save(str(artifacts / "jobs_panel.png"))
    models_panel.grab().save(str(artifacts / "models_panel.png"))

    # remote mode against the same engine: the right token downloads the verified model, a wrong one is refused
    token = (default_data_home() / "engine" / "token").read_text().strip()
    remote = links()
    remote.start(EngineSettings(mode="remote", url=link.url, token=token))
    qtbot.waitUntil(lambda: remote.state == "connected", timeout=10_000)
    qtbot.waitUntil(lambda: any(j.id == train_id for j in remote.jobs), timeout=5_000)
    fetched: list[Path] = []
    errors: list[str] = []
    remote.fetch_model(next(j for j in remote.jobs if j.id == train_id), fetched.append, errors.append)
    qtbot.waitUntil(lambda: bool(fetched or errors), timeout=30_000)
    assert not errors, errors
    assert fetched[0] == default_data_home() / "models" / train_id
    for name in ("model.onnx", "model.json"):
        assert hashlib.sha256((fetched[0] / name).read_bytes()).digest() == \
            hashlib.sha256((model_dir / name).read_bytes()).digest()
    wrong = links()
    wrong.start(EngineSettings(mode="remote", url=link.url, token="wrong-token-wrong-token"))
    qtbot.waitUntil(lambda: wrong.state == "unauthorized", timeout=10_000)
    assert "refused the token" in wrong.detail and "\n" not in wrong.detail

    # stop(): the engine process and its workers are gone
    workers = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    t = time.monotonic()
    link.stop()
    assert link.state == "stopped" and link.engine_pid is None and time.monotonic() - t < 0.5  # waits elsewhere
    qtbot.waitUntil(lambda: _gone(pid) and all(_gone(w) for w in workers), timeout=15_000)
    assert "stopped" in jobs_panel.status_label.text()
    print(f"\nengine up in {t_started:.1f} s, trained by {t_trained:.1f} s, all done in {time.monotonic() - t0:.1f} s")


def test_local_engine_that_dies_is_reported_as_stopped(qtbot, home, links):
    link = links()
    link.start(EngineSettings(mode="local"))
    qtbot.waitUntil(lambda: link.state == "connected", timeout=60_000)
    pid = link.engine_pid
    os.kill(pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: link.state == "stopped", timeout=15_000)
    assert "local engine exited" in link.detail and "engine.log" in link.detail
    assert link.engine_pid is None
    # start() again brings up a fresh engine over the same data folder
    link.start()
    qtbot.waitUntil(lambda: link.state == "connected", timeout=60_000)
    assert link.engine_pid not in (None, pid)


def test_remote_engine_unreachable_then_recovers(qtbot, links, tmp_path):
    port = _free_port()
    token = "gui-test-token-0123456789"
    link = links()
    statuses: list[str] = []
    link.status_changed.connect(lambda state, _detail: statuses.append(state))
    link.start(EngineSettings(mode="remote", url=f"http://127.0.0.1:{port}", token=token))
    qtbot.waitUntil(lambda: link.state == "unreachable", timeout=10_000)
    assert "unreachable" in link.detail and "\n" not in link.detail and "Traceback" not in link.detail
    errors: list[str] = []
    link.submit("eval", {"model": "m", "data": "d"}, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=2_000)
    assert errors[0].startswith("not connected to an engine")

    # the engine comes up on that port: the link retries by itself and connects
    (tmp_path / "token").write_text(token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(port), "--data-dir",
         str(tmp_path / "engine"), "--token-file", str(tmp_path / "token")],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        qtbot.waitUntil(lambda: link.state == "connected", timeout=30_000)
        assert statuses[:2] == ["starting", "unreachable"] and statuses[-1] == "connected"
        assert link.jobs == [] and not link.is_local and link.engine_pid is None
    finally:
        link.stop()
        proc.terminate()
        proc.wait(15)


def test_train_dialog_refuses_a_missing_folder_and_gives_engine_params(qtbot, demo_data, tmp_path, artifacts):
    dialog = TrainDialog(tmp_path / "missing", [DEMO_CATEGORY, "other"])
    qtbot.addWidget(dialog)
    dialog.show()
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted
    assert dialog.error_label.isVisible() and "Dataset folder not found" in dialog.error_label.text()
    assert "rgb(200, 30, 30)" in dialog.data_field.edit.styleSheet()
    dialog.grab().save(str(artifacts / "train_dialog_error.png"))

    dialog.data_field.setText(str(demo_data))
    dialog.image_size.setValue(128)
    dialog.device_box.setCurrentText("cpu")
    qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Accepted and not dialog.isVisible()
    assert dialog.params() == {"data": str(demo_data), "category": DEMO_CATEGORY, "image_size": 128,
                               "bank_size": 10_000, "backbone": "efficientnet-lite0", "device": "cpu"}

    # a remote engine's paths live on the engine: only emptiness is checked here
    remote = TrainDialog("/on/the/engine/only", check_paths=False)
    qtbot.addWidget(remote)
    assert remote.errors() == [] and remote.params()["category"] is None


def test_eval_and_settings_dialogs_validate_inline(qtbot, home, demo_data, tmp_path):
    ev = EvalDialog(tmp_path, demo_data, [DEMO_CATEGORY])
    qtbot.addWidget(ev)
    assert ev.errors() == [f"No model.onnx in {tmp_path}"]
    (tmp_path / "model.onnx").write_bytes(b"")
    assert ev.errors() == [] and set(ev.params()) == {"model", "data", "category", "device"}

    dialog = EngineSettingsDialog(EngineSettings(mode="remote", url="ftp://x", token=""))
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and "http://" in dialog.error_label.text() and "token" in dialog.error_label.text()
    assert dialog.token_edit.echoMode() == dialog.token_edit.EchoMode.Password
    dialog.url_edit.setText("https://engine.example:8765/")
    dialog.token_edit.setText("t" * 24)
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Accepted
    chosen = dialog.settings()
    assert chosen == EngineSettings("remote", "https://engine.example:8765", "t" * 24, "")
    save_settings(chosen)
    assert load_settings() == chosen  # kept in the isolated home's gui.ini
    local = EngineSettingsDialog(EngineSettings())
    qtbot.addWidget(local)
    assert local.errors() == [] and not local.url_edit.isEnabled()


def test_jobs_table_updates_in_place_and_keeps_the_selection(qtbot):
    link = EngineLink()  # never started: the panel is fed through the link's signal
    panel = JobsPanel(link)
    qtbot.addWidget(panel)

    def job(job_id: str, created: float, state: str = "running", **kw: object) -> JobView:
        return JobView.from_dict({"id": job_id, "kind": "train_anomaly", "state": state, "progress": 0.0,
                                  "message": "", "error": None, "params": {}, "result": None, "created": created,
                                  "started": None, "finished": None, "placement": None, **kw})

    link.jobs_changed.emit([job("a", 1), job("b", 2)])
    assert [panel.model.index(r, 0).data() for r in range(2)] == ["b", "a"]
    assert panel.select_job("a")
    resets: list[int] = []
    panel.model.modelReset.connect(lambda: resets.append(1))
    link.jobs_changed.emit([job("a", 1, progress=0.5), job("c", 3),
                            job("b", 2, state="failed", error="out of memory\nin the worker")])
    assert [panel.model.index(r, 0).data() for r in range(3)] == ["c", "b", "a"]
    assert panel.selected_job().id == "a" and panel.selected_job().progress == 0.5
    assert [j.id for j in panel.jobs()] == ["c", "b", "a"]
    failed = panel.model.index(1, COL_MESSAGE)
    assert failed.data() == "out of memory" and "in the worker" in failed.data(Qt.ItemDataRole.ToolTipRole)
    link.jobs_changed.emit([job("c", 3)])
    assert panel.model.rowCount() == 1 and panel.selected_job() is None and not resets


def test_models_panel_remembers_added_folders(qtbot, home, tmp_path):
    good, broken = tmp_path / "good", tmp_path / "broken"
    good.mkdir()
    broken.mkdir()
    (good / "model.onnx").write_bytes(b"")
    (good / "model.json").write_text('{"category": "washer", "backbone": "efficientnet-lite1", "input_size": 192}')
    link = EngineLink()
    panel = ModelsPanel(link)
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitExposed(panel)
    panel.add_model_dir(good)
    panel.add_model_dir(broken)
    assert panel.models() == [good, broken]
    item = panel.tree.findItems("good", Qt.MatchFlag.MatchContains | Qt.MatchFlag.MatchRecursive)[0]
    qtbot.waitUntil(lambda: "efficientnet-lite1" in item.toolTip(0), timeout=5_000)
    assert item.text(0) == "washer · good"
    bad = panel.tree.findItems("broken", Qt.MatchFlag.MatchContains | Qt.MatchFlag.MatchRecursive)[0]
    qtbot.waitUntil(lambda: str(broken) in bad.toolTip(0) and "unusable" in bad.text(0), timeout=5_000)
    panel.tree.setCurrentItem(item)
    with qtbot.waitSignal(panel.model_activated, timeout=5_000) as activated:
        # a real double click starts with a press; QTest's mouseDClick alone sends only the second half
        where = panel.tree.visualItemRect(item).center()
        qtbot.mouseClick(panel.tree.viewport(), Qt.MouseButton.LeftButton, pos=where)
        qtbot.mouseDClick(panel.tree.viewport(), Qt.MouseButton.LeftButton, pos=where)
    assert activated.args == [good]
    panel.activate_row(1)  # the broken folder: a readable refusal, no signal
    qtbot.waitUntil(lambda: str(broken) in panel.message_label.text(), timeout=5_000)
    assert panel.active_model == good

    again = ModelsPanel(EngineLink())  # a new session reads the same ini
    qtbot.addWidget(again)
    assert again.models() == [good, broken]
