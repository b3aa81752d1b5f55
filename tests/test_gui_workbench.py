"""The real main window (offscreen): open a dataset, review by key, reload, train and score through a real engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("PySide6", reason="GUI extra not installed")

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QDockWidget

from app.gui.engine_link import EngineSettings
from app.gui.main_window import MainWindow
from tests.conftest import DEMO_CATEGORY

REPO = Path(__file__).resolve().parents[1]


def artifacts_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("DEFECTSCOPE_TEST_ARTIFACTS") or tmp_path) / "workbench"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def window(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def open_and_wait(qtbot, w: MainWindow, root: Path) -> None:
    with qtbot.waitSignal(w.dataset_loaded, timeout=30_000):
        w.open_dataset(root)


def test_review_by_keyboard_survives_a_restart(qtbot, window, demo_data, tmp_path):
    root = demo_data / DEMO_CATEGORY
    open_and_wait(qtbot, window, root)
    keys = window.browser.visible_keys()
    assert len(keys) == len(window.dataset.samples) > 20
    first = window.current_key()
    assert first == keys[0]
    qtbot.waitUntil(lambda: window.image_view.key == first, timeout=10_000)

    qtbot.keyClick(window, Qt.Key.Key_N)  # NG, and the review moves on
    assert window.current_key() == keys[1]
    qtbot.keyClick(window, Qt.Key.Key_O)
    qtbot.keyClick(window, Qt.Key.Key_Left)
    assert window.current_key() == keys[1]
    qtbot.keyClick(window, Qt.Key.Key_U)  # overrides OK with unsure: two decisions in its history
    window.review.note_edit.setFocus()
    qtbot.keyClicks(window.review.note_edit, "burr on rim, no verdict keys here")
    window.review.flush_note()
    assert window.current_key() == keys[2]  # typing "n"/"o"/"u" in the note did not set verdicts or move

    window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    again.show()
    open_and_wait(qtbot, again, root)
    model = again.browser.model
    assert model.verdict_of(keys[0]) == "ng"
    assert model.verdict_of(keys[1]) == "unsure"
    assert model.verdict_of(keys[2]) is None
    history = again.store.history(keys[1])
    assert [d.verdict for d in history[:2]] == ["ok", "unsure"]
    # The note was typed on the image the review had advanced to; it has a note and still no verdict.
    assert [d.note for d in again.store.history(keys[2])] == ["burr on rim, no verdict keys here"]
    out = tmp_path / "decisions.csv"
    assert again.store.export_csv(out) >= 2
    assert "burr on rim" in out.read_text(encoding="utf-8-sig")
    again.grab().save(str(artifacts_dir(tmp_path) / "review.png"))
    again.close()


def test_a_corrupt_image_gets_a_badge_and_no_crash(qtbot, window, tmp_path):
    root = tmp_path / "folder"
    for sub in ("good", "scratch"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "good" / f"{i}.png")
    (root / "scratch" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    open_and_wait(qtbot, window, root)
    model = window.browser.model
    broken = [k for k in model.keys() if k.endswith("broken.png")]  # noqa: SIM118  (a Qt model, not a dict)
    assert broken and model.issue_at(model.row_for_key(broken[0]))
    window.browser.select_key(broken[0])
    qtbot.waitUntil(lambda: "broken.png" in (window.image_view.message or ""), timeout=10_000)


def test_an_unreachable_engine_shows_a_banner(qtbot, window):
    window.link.start(EngineSettings(mode="remote", url="http://127.0.0.1:9", token="x" * 20, tls_ca=""))
    qtbot.waitUntil(lambda: window.banner.isVisible(), timeout=20_000)
    assert "unreachable" in window.banner.text()
    assert "unreachable" in window.engine.label.text()


@pytest.mark.slow
def test_train_score_and_inspect_through_a_real_local_engine(qtbot, window, demo_data, tmp_path):
    root = demo_data / DEMO_CATEGORY
    window.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    open_and_wait(qtbot, window, root)
    qtbot.waitUntil(lambda: window.link.state == "connected", timeout=60_000)

    submitted: list[str] = []
    window.link.submit("train_anomaly", {"data": str(root), "image_size": 128, "bank_size": 256, "device": "cpu"},
                       on_done=submitted.append)
    qtbot.waitUntil(lambda: bool(submitted), timeout=10_000)
    with qtbot.waitSignal(window.link.job_finished, timeout=240_000,
                          check_params_cb=lambda job: job.id == submitted[0]) as finished:
        pass
    assert finished.args[0].state == "succeeded", finished.args[0]
    qtbot.waitUntil(lambda: len(window.models.panel.models()) >= 1, timeout=20_000)
    with qtbot.waitSignal(window.models.panel.model_activated, timeout=20_000) as activated:
        window.models.panel.activate_row(0)
    assert (Path(activated.args[0]) / "model.onnx").is_file()

    with qtbot.waitSignal(window.scoring.predictions_loaded, timeout=240_000) as loaded:
        window.scoring.score_dataset()
    n = loaded.args[0]
    assert n == len(window.dataset.samples)
    scores = window.scoring.predictions.scores
    # Sorted by score, highest first, and the worst-scored images are mostly the defective ones.
    order = window.browser.visible_keys()
    assert scores[order[0]] >= scores[order[-1]]
    top = order[: sum(1 for s in window.dataset.samples if s.label == "defective")]
    assert sum(window.samples[k].label == "defective" for k in top) >= 0.6 * len(top)

    with qtbot.waitSignal(window.image_view.image_shown, timeout=10_000,
                          check_params_cb=lambda key: key == order[0]):
        window.browser.select_key(order[0])
    assert window.image_view.heatmap_item.image is not None
    assert window.scoring.metrics_view.roc.title().startswith("ROC")
    # The PRO curve arrives from maps and masks read off the GUI thread.
    qtbot.waitUntil(lambda: not window.scoring.metrics_view.pro.showing_message and "AU-PRO" in
                    window.scoring.metrics_view.pro.title(), timeout=30_000)
    # The threshold control says what a change means on the labelled set.
    lowest = np.floor(min(scores.values()) * 1000) / 1000  # the spin box keeps 3 decimals
    window.review.threshold_spin.setValue(lowest)  # the control's range covers every score of the dataset
    assert window.review.threshold() == pytest.approx(lowest)
    assert f"{n} NG / 0 OK predicted" in window.review.impact_label.text()
    assert "flip" in window.review.impact_label.text()
    window.scoring.set_threshold(window.scoring.model_threshold)
    art = artifacts_dir(tmp_path)
    window.grab().save(str(art / "workbench_scored.png"))
    window.findChild(QDockWidget, "Metrics").raise_()
    qtbot.wait(300)
    window.grab().save(str(art / "workbench_metrics.png"))
    window.engine.jobs_panel.grab().save(str(art / "jobs.png"))


@pytest.mark.slow
def test_event_loop_never_stalls_while_training_and_browsing_large_images(qtbot, window, demo_data, tmp_path):
    """Longest gap between 10 ms timer ticks while a job trains and 12 large JPEGs are stepped through."""
    big = tmp_path / "big" / "good"
    big.mkdir(parents=True)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    for i in range(12):
        img = Image.fromarray(np.roll(base, i * 7, axis=1)).resize((6000, 4500), Image.Resampling.BILINEAR)
        img.save(big / f"{i:02d}.jpg", quality=90)
    window.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: window.link.state == "connected", timeout=60_000)
    submitted: list[str] = []
    window.link.submit("train_anomaly", {"data": str(demo_data / DEMO_CATEGORY), "image_size": 256,
                                         "device": "cpu"}, on_done=submitted.append)
    open_and_wait(qtbot, window, big.parent)

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    shown: list[str] = []
    window.image_view.image_shown.connect(shown.append)
    for _ in range(11):
        qtbot.wait(350)
        window.next_image()
    last_key = window.browser.visible_keys()[-1]
    assert window.current_key() == last_key
    # Stepping faster than 6000x4500 JPEGs decode drops stale loads; the last one must arrive in full.
    qtbot.waitUntil(lambda: last_key in shown, timeout=60_000)
    qtbot.wait(500)
    timer.stop()
    job_running = any(j.state == "running" for j in window.engine.jobs_panel.jobs())
    worst_ms = max(gaps) * 1000
    print(f"longest event-loop stall: {worst_ms:.0f} ms over {len(gaps)} ticks; training running: {job_running}")
    (artifacts_dir(tmp_path) / "stall.txt").write_text(f"{worst_ms:.1f} ms, job running {job_running}\n")
    assert submitted, "the training job was not submitted"
    assert worst_ms < 200, f"event loop stalled {worst_ms:.0f} ms"


def test_gui_command_saves_a_screenshot_and_quits(tmp_path, demo_data):
    shot = tmp_path / "shot.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "gui", "--dataset", str(demo_data / DEMO_CATEGORY), "--no-engine",
         "--screenshot", str(shot), "--quit-after-ms", "5000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 400 and img.shape[1] > 800
    assert img.std() > 10  # the window, not a blank frame
    proc = subprocess.run([sys.executable, "-m", "app.cli", "gui", "--dataset", str(tmp_path / "nope")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_start_demo_trains_scores_and_screenshots(tmp_path):
    """The README's main job: `defectscope gui --demo` trains a demo model through its engine and scores the set."""
    shot = tmp_path / "demo.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO),
               DEFECTSCOPE_HOME=str(tmp_path / "home"))
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "gui", "--demo", "--screenshot", str(shot), "--quit-when-scored",
         "--quit-after-ms", "400000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=480,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "home" / "runs" / "demo_washer" / "model.onnx").is_file()
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The heatmap overlay is on screen: the demo parts are grey, so warm-coloured pixels (red well above blue)
    # in the image view can only come from the heatmap of the selected image.
    view = img[50:620, 510:1220]
    assert ((view[..., 0] - view[..., 2]) > 80).sum() > 300


def test_reviewing_under_the_unreviewed_filter_skips_nothing_and_notes_keep_the_cursor(qtbot, window, demo_data):
    open_and_wait(qtbot, window, demo_data / DEMO_CATEGORY)
    window.browser.proxy.set_verdict("unreviewed")
    todo = window.browser.visible_keys()
    window.browser.select_key(todo[0])
    for _ in range(3):
        qtbot.keyClick(window, Qt.Key.Key_N)
    # Each decided image leaves the filtered list; the review goes to the next undecided one, skipping none.
    assert [window.browser.model.verdict_of(k) for k in todo[:4]] == ["ng", "ng", "ng", None]
    assert window.current_key() == todo[3]

    edit = window.review.note_edit
    edit.setFocus()
    qtbot.keyClicks(edit, "scratch ")
    qtbot.wait(900)  # the note autosaves after a pause in typing...
    qtbot.keyClicks(edit, "near hole")  # ...and typing on continues where the cursor was
    window.review.flush_note()
    assert edit.toPlainText() == "scratch near hole"
    assert window.store.history(todo[3])[-1].note == "scratch near hole"


def test_scores_made_on_another_dataset_are_not_shown(qtbot, window, demo_data, tmp_path):
    import json

    open_and_wait(qtbot, window, demo_data / DEMO_CATEGORY)
    key = window.browser.visible_keys()[0]
    folder = tmp_path / "pred"
    (folder / "maps").mkdir(parents=True)
    # Same keys (MVTec categories share names like test/good/000.png), another dataset root.
    (folder / "scores.json").write_text(json.dumps({
        "model": "m", "data": str(tmp_path / "other"), "category": None, "threshold": 0.5,
        "items": {key: {"score": 3.0, "map": "maps/000000.npy"}}, "errors": {}}))
    with qtbot.waitSignal(window.status_message, timeout=10_000,
                          check_params_cb=lambda m: "not shown" in m):
        window.scoring.load_predictions(folder)
    assert window.scoring.predictions is None and window.browser.model.score_of(key) is None
