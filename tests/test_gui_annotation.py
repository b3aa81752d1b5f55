"""Annotating in the real main window: draw with the mouse, undo by key, prompt a real ONNX segmenter."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtWidgets import QDockWidget

from app.annotate.document import AnnotationStore
from app.gui.main_window import MainWindow
from tests.conftest import DEMO_CATEGORY
from tests.test_gui_workbench import artifacts_dir, open_and_wait


@pytest.fixture
def window(qtbot, demo_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))  # annotations of other tests stay out
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    open_and_wait(qtbot, w, demo_data / DEMO_CATEGORY)
    key = w.current_key()
    qtbot.waitUntil(lambda: w.annotation.controller.editor is not None and w.annotation.controller.editor.ann.key == key,
                    timeout=10_000)
    yield w
    w.close()


def _viewport_point(w: MainWindow, x: float, y: float) -> QPoint:
    """Image pixel -> a point on the view's viewport widget (where real mouse events arrive)."""
    vb = w.image_view.view_box
    view = vb.scene().views()[0]
    return view.mapFromScene(vb.mapViewToScene(QPointF(x, y)))


def _drag(qtbot, w: MainWindow, points: list[tuple[float, float]]) -> None:
    viewport = w.image_view.view_box.scene().views()[0].viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=_viewport_point(w, *points[0]))
    for p in points[1:]:
        qtbot.mouseMove(viewport, _viewport_point(w, *p))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=_viewport_point(w, *points[-1]))


def _drawn(w: MainWindow) -> list:
    """The shapes drawn here (the image's own labels, source "dataset", are seeded before them)."""
    return [s for s in w.annotation.controller.shapes() if s.source != "dataset"]


def test_draw_box_brush_and_polygon_with_the_mouse_undo_and_find_them_after_reopening(qtbot, window, tmp_path):
    w = window
    key = w.current_key()
    # The image's own label (the demo's defect mask, if it has one) is there to edit before anything is drawn.
    own = [s for s in w.annotation.controller.shapes() if s.source == "dataset"]
    assert [s.kind for s in own] == (["mask"] if w.samples[key].mask_path else [])
    w.annotation.panel.class_combo.setCurrentText("burr")
    qtbot.keyClick(w, Qt.Key.Key_B)
    assert w.annotation.controller.layer.tool == "box"
    _drag(qtbot, w, [(40, 40), (70, 60), (100, 90)])
    shapes = _drawn(w)
    assert [s.kind for s in shapes] == ["box"] and shapes[0].class_name == "burr"
    (x0, y0), (x1, y1) = shapes[0].points
    assert abs(x0 - 40) < 3 and abs(y0 - 40) < 3 and abs(x1 - 100) < 3 and abs(y1 - 90) < 3

    qtbot.keyClick(w, Qt.Key.Key_R)  # brush
    _drag(qtbot, w, [(150, 150), (160, 155), (175, 160)])
    assert [s.kind for s in _drawn(w)] == ["box", "mask"]
    qtbot.keyClick(w, Qt.Key.Key_P)  # polygon: three clicks, right-click closes
    viewport = w.image_view.view_box.scene().views()[0].viewport()
    for x, y in [(20, 150), (60, 150), (40, 190)]:
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=_viewport_point(w, x, y))
    qtbot.mouseClick(viewport, Qt.MouseButton.RightButton, pos=_viewport_point(w, 40, 170))
    assert [s.kind for s in _drawn(w)] == ["box", "mask", "polygon"]

    qtbot.keyClick(w, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert [s.kind for s in _drawn(w)] == ["box", "mask"]
    w.findChild(QDockWidget, "Annotate").raise_()
    qtbot.wait(200)
    w.grab().save(str(artifacts_dir(tmp_path) / "annotate.png"))

    # Saved as drawn: a fresh store (as after a restart) finds exactly what is on screen.
    store = AnnotationStore(w.dataset.root)
    size = w.image_view.image_size
    assert [s.kind for s in store.load(key, *size).shapes] == [s.kind for s in own] + ["box", "mask"]

    # Copy labels to the next image.
    w.next_image()
    nxt = w.current_key()
    qtbot.waitUntil(lambda: w.annotation.controller.editor is not None and w.annotation.controller.editor.ann.key == nxt,
                    timeout=10_000)
    w.annotation.panel.copy_button.click()
    assert [s.source for s in _drawn(w)] == ["copied", "copied"]  # the drawn ones; each image keeps its own labels


@pytest.mark.slow
def test_segment_tool_proposes_a_mask_from_a_real_onnx_segmenter(qtbot, window, tmp_path_factory):
    pytest.importorskip("torch")
    from tests.segmenter_fixtures import export_tiny_segmenter

    folder = tmp_path_factory.mktemp("seg") / "tiny"
    export_tiny_segmenter(folder)
    w = window
    w.annotation.controller.load_segmenter(Path(folder))
    qtbot.waitUntil(lambda: w.annotation.controller.segmenter is not None, timeout=30_000)
    qtbot.keyClick(w, Qt.Key.Key_S)
    viewport = w.image_view.view_box.scene().views()[0].viewport()
    with qtbot.waitSignal(w.annotation.controller.proposal_ready, timeout=30_000):
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=_viewport_point(w, 120, 120))
    proposal = w.annotation.controller._proposal
    assert proposal is not None
    assert proposal.shape == (w.image_view.image_size[1], w.image_view.image_size[0])
    assert "predicted IoU" in w.annotation.panel.status.text()
    qtbot.keyClick(w, Qt.Key.Key_Return)
    # A randomly initialised model may propose nothing; then keeping it is refused with a reason.
    if proposal.any():
        assert w.annotation.controller.shapes()[-1].source == "segmenter"
    else:
        assert "empty" in w.annotation.panel.status.text()


def test_auto_prompt_proposals_are_accepted_or_rejected_one_by_one(qtbot, window):
    import numpy as np

    from engine.auto_prompts import AutoPrompt, Proposal

    w = window
    key = w.current_key()
    width, height = w.image_view.image_size
    items = []
    for x in (20, 120):
        m = np.zeros((height, width), bool)
        m[30:60, x:x + 40] = True
        items.append(Proposal(AutoPrompt((x, 30, x + 40, 60), (x + 20, 45), 1.2, 1200), m, 0.9).to_json())
    w.annotation.panel.fineness_spin.setValue(0)  # keep proposals as pixel masks
    before = len(w.annotation.controller.shapes())  # other tests of this session may have annotated this image
    assert w.annotation.controller.set_pending({key: items, "some/other.png": items[:1]}) == 3
    assert w.annotation.controller._proposal is not None and w.annotation.controller._proposal[45, 30]
    assert "2 left" in w.annotation.panel.status.text()
    qtbot.keyClick(w, Qt.Key.Key_Return)  # keep the first
    assert [s.source for s in w.annotation.controller.shapes()[before:]] == ["auto-prompt"]
    assert w.annotation.controller._proposal is not None and w.annotation.controller._proposal[45, 130], "the second is shown next"
    qtbot.keyClick(w, Qt.Key.Key_Delete)  # reject it
    assert w.annotation.controller._proposal is None and len(w.annotation.controller.shapes()) == before + 1
    assert w.annotation.controller.pending[key] == []


@pytest.mark.slow
def test_segmenter_retrains_in_the_engine_on_masks_drawn_here_and_loads(qtbot, window):
    """Draw a defect on a good image, Model ▸ Train segmenter: a real local engine trains on the dataset's masks
    plus the drawn one (and synthetic defects), and the new segmenter loads into the Annotate dock."""
    import json

    from app.gui.engine_link import EngineSettings
    from engine.datasets.types import GOOD

    w = window
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    good_key = next(k for k, s in w.samples.items() if s.label == GOOD)
    with qtbot.waitSignal(w.image_view.image_shown, timeout=10_000, check_params_cb=lambda k: k == good_key):
        w.browser.select_key(good_key)
    qtbot.waitUntil(lambda: w.annotation.controller.editor is not None and w.annotation.controller.editor.ann.key == good_key,
                    timeout=10_000)
    w.annotation.panel.class_combo.setCurrentText("scratch")
    w.annotation.controller._on_polygon([(60.0, 60.0), (120.0, 64.0), (118.0, 80.0), (62.0, 76.0)])
    assert [s.kind for s in w.annotation.controller.shapes()] == ["polygon"]

    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)
    w.annotation.segmenter_job_params = {"input_size": 128, "epochs": 2, "time_budget_s": 60, "synthetic_images": 6,
                              "holdout_fraction": 0.0, "device": "cpu"}
    submitted: list[str] = []
    w.annotation.train_segmenter(on_submitted=submitted.append)
    qtbot.waitUntil(lambda: bool(submitted), timeout=30_000)
    with qtbot.waitSignal(w.link.job_finished, timeout=240_000,
                          check_params_cb=lambda job: job.id == submitted[0]) as finished:
        pass
    assert finished.args[0].state == "succeeded", finished.args[0]
    qtbot.waitUntil(lambda: w.annotation.controller.segmenter is not None, timeout=30_000)
    meta = json.loads((w.annotation.controller.segmenter_dir / "segmenter.json").read_text())
    trained_on = {Path(p).name for p in meta["training"]["images_train"]}
    assert w.samples[good_key].image_path.name in trained_on  # the drawn mask was learned from
    assert meta["training"]["n_synthetic_defects"] >= 1
    assert "ready" in w.annotation.panel.status.text()
