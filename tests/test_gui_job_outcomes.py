"""Job outcomes without a hub, and models named to a remote engine by artifact ref: real engines on loopback,
the real main window offscreen.

* each submitted job's outcome goes to the callback it was submitted with (two jobs, two callbacks);
* Model ▸ Score dataset on a remote engine (a second engine process that may read only its own folder) sends
  the engine's artifact ref `job:<id>/model`, never the workbench's download cache, and the heatmaps load;
* the metrics count the test split only (as `defectscope eval`) and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from app.gui.engine_link import EngineLink, EngineSettings
from app.gui.main_window import MainWindow
from engine.client import JobView
from engine.datasets.splits import resolve_splits
from engine.server.layout import artifact_ref
from tests.conftest import DEMO_CATEGORY
from tests.test_gui_workbench import open_and_wait

REPO = Path(__file__).resolve().parents[1]
TOKEN = "job-outcomes-test-token-0123456789"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def window(qtbot, home):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote_engine(tmp_path: Path):
    """A second engine on loopback, as a remote one: its own data dir, and it may read only its own data root."""
    port = _free_port()
    root = tmp_path / "remote"
    (root / "data").mkdir(parents=True)
    (root / "token").write_text(TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(port), "--data-dir", str(root / "engine"),
         "--token-file", str(root / "token"), "--data-root", str(root / "data")],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", root / "data"
    finally:
        proc.terminate()
        proc.wait(15)


def test_two_jobs_each_reach_their_own_callback(qtbot, home, remote_engine):
    url, data = remote_engine
    link = EngineLink()
    try:
        link.start(EngineSettings(mode="remote", url=url, token=TOKEN))
        qtbot.waitUntil(lambda: link.state == "connected", timeout=30_000)
        ids: dict[str, str] = {}
        outcomes: dict[str, list[JobView]] = {"a": [], "b": []}
        announced: list[JobView] = []
        refused: list[str] = []
        link.job_finished.connect(announced.append)
        for name in ("a", "b"):
            link.submit("eval", {"model": str(data / f"model-{name}"), "data": str(data / f"set-{name}")},
                        on_done=lambda job_id, n=name: ids.__setitem__(n, job_id),
                        on_finished=outcomes[name].append, on_error=refused.append)
        qtbot.waitUntil(lambda: len(ids) == 2 or bool(refused), timeout=10_000)
        assert not refused, refused
        qtbot.waitUntil(lambda: all(outcomes.values()), timeout=60_000)
        qtbot.wait(1500)  # a few more polls: neither callback may run twice
        for name in ("a", "b"):
            [job] = outcomes[name]
            assert isinstance(job, JobView) and job.done
            assert job.id == ids[name] and job.params["model"] == str(data / f"model-{name}")
            assert job.state == "failed" and job.error
        assert ids["a"] != ids["b"]
        assert {j.id for j in announced} == set(ids.values())  # the signal still tells everyone, once per job
    finally:
        link.stop()


def test_metrics_count_the_test_split_only_and_say_so(qtbot, window, demo_data, tmp_path):
    open_and_wait(qtbot, window, demo_data / DEMO_CATEGORY)
    keys = list(window.samples)
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "scores.json").write_text(json.dumps({
        "model": "m", "data": str(window.dataset.root), "category": None, "threshold": 0.5,
        "items": {k: {"score": 0.9 if window.samples[k].label == "defective" else 0.1, "map": "maps/none.npy"}
                  for k in keys}, "errors": {}}))
    with qtbot.waitSignal(window.scoring.predictions_loaded, timeout=10_000):
        window.scoring.load_predictions(folder)
    by_path = {s.image_path: s.split for s in resolve_splits(window.dataset.samples)}
    n_test = sum(by_path[s.image_path] == "test" for s in window.samples.values())
    assert 0 < n_test < len(keys)  # the demo set has training images: they must be left out
    scope = window.scoring.metrics_view.scope_label.text()
    assert f"the {n_test} test-split images" in scope and f"{len(keys) - n_test} training" in scope
    assert len(window.scoring.metric_keys(window.scoring.predictions, window.scoring.predictions.scores)) == n_test
    assert window.browser.model.score_of(keys[0]) is not None  # the browser still shows every image's score


@pytest.mark.slow
def test_score_dataset_on_a_remote_engine_names_the_model_by_its_artifact_ref(qtbot, window, demo_data,
                                                                               remote_engine):
    url, data_root = remote_engine
    root = data_root / DEMO_CATEGORY
    shutil.copytree(demo_data / DEMO_CATEGORY, root)
    window.link.start(EngineSettings(mode="remote", url=url, token=TOKEN))
    open_and_wait(qtbot, window, root)
    qtbot.waitUntil(lambda: window.link.state == "connected", timeout=30_000)

    trained: list[JobView] = []
    window.link.submit("train_anomaly", {"data": str(root), "image_size": 128, "bank_size": 256, "device": "cpu"},
                       on_finished=trained.append, on_error=pytest.fail)
    qtbot.waitUntil(lambda: bool(trained), timeout=240_000)
    assert trained[0].state == "succeeded", trained[0]
    qtbot.waitUntil(lambda: trained[0].id in window.models.panel._job_items, timeout=10_000)
    with qtbot.waitSignal(window.models.panel.model_activated, timeout=60_000) as activated:
        window.models.panel.activate_row(0)  # a remote engine's model: downloaded into the local cache
    assert window.models.model_dir == Path(activated.args[0])
    assert not str(activated.args[0]).startswith(str(data_root))  # a workbench folder, not the engine's

    # What Score dataset sends as `model`: the engine's own name for its model, not the download cache's path.
    assert window.link.engine_path(window.models.model_dir) == artifact_ref(trained[0].id, "model")
    loaded: list[int] = []
    window.scoring.predictions_loaded.connect(loaded.append)
    window.scoring.score_dataset()
    qtbot.waitUntil(lambda: bool(loaded) or "Scor" in window.banner.text(), timeout=240_000)
    assert loaded, window.banner.text()  # the engine resolved the ref (C3), scored, and the scores came back
    [job] = [j for j in window.link.jobs if j.kind == "score_dataset"]
    # The engine ran it on its own folder of that job, and keeps the reference the workbench sent.
    assert job.refs["model"] == artifact_ref(trained[0].id, "model")
    assert Path(job.params["model"]).is_relative_to(data_root.parent / "engine")
    key = window.browser.visible_keys()[0]
    with qtbot.waitSignal(window.image_view.image_shown, timeout=10_000, check_params_cb=lambda k: k == key):
        window.browser.select_key(key)
    assert window.image_view.heatmap_item.image is not None
