"""Open-set search in the workbench: the real main window (offscreen), a real local engine, a real open-set detector
(trained once per session, tests.conftest.open_detector_run) on a generated set of two shapes.

Find by name goes through the engine's detect_dataset job with a prompts folder; find similar runs the torch-free
runtime here; both end as detections in the Detect dock and a ranked hits list in the Find dock.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")

from app.gui.features.open_set import asked_prompts
from app.gui.main_window import MainWindow
from engine.class_prompts import PROMPTS_FILE
from tests.test_gui_workbench import open_and_wait


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def test_typed_entries_use_the_known_phrasings_or_their_own_words() -> None:
    known = {"rolled-in_scale": ["rolled-in scale", "oxide scale pressed in"], "crazing": ["crazing"]}
    assert asked_prompts("Rolled in scale, hairline crack,", known) == {
        "rolled-in_scale": ["rolled-in scale", "oxide scale pressed in"], "hairline crack": ["hairline crack"]}
    assert asked_prompts(" , ", known) == {}


def _share_of_hits_on(w: MainWindow, class_name: str, top: int = 8) -> float:
    """Of the `top` best-ranked images in the Find dock, the share that have a labelled box of `class_name`."""
    keys = [w.open_set.panel.hits.item(i).data(0x0100) for i in range(min(top, w.open_set.panel.hits.count()))]
    dets = w.detection.detections
    with_class = [k for k in keys if dets.items[k].truth is not None and class_name in dets.items[k].truth.classes]
    return len(with_class) / max(len(keys), 1)


def test_find_by_name_and_find_similar_through_a_real_engine(qtbot, window, tmp_path: Path, open_shapes: Path,
                                                             open_detector_run: Path) -> None:
    from app.gui.engine_link import EngineSettings

    w = window
    open_and_wait(qtbot, w, open_shapes)
    w.models.set_model(open_detector_run)
    qtbot.waitUntil(lambda: w.models.model_info is not None and w.models.model_info.kind == "open_detector",
                    timeout=10_000)
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)

    # The phrasings are edited per dataset and used for the class typed by name.
    prompts = w.open_set.dataset_prompts()
    assert prompts["dark_disc"] == ["dark disc", "black round spot"]  # the detector's own, learnt with
    w.open_set.save_phrasings({**prompts, "dark_disc": ["black round spot", "dark disc", "round hole"]})
    assert w.open_set.dataset_prompts()["dark_disc"][-1] == "round hole"

    with qtbot.waitSignal(w.detection.detections_loaded, timeout=300_000):
        w.open_set.panel.find_edit.setText("dark disc")
        w.open_set.panel.find_button.click()
    dets = w.detection.detections
    assert dets.classes == ["dark_disc"] and set(dets.items) == set(w.samples)
    sent = [json.loads(p.read_text()) for p in (tmp_path / "home" / "find").glob(f"*/{PROMPTS_FILE}")]
    assert sent == [{"dark_disc": ["black round spot", "dark disc", "round hole"]}]  # what the engine searched by
    qtbot.waitUntil(lambda: w.open_set.panel.hits.count() > 0, timeout=10_000)
    assert _share_of_hits_on(w, "dark_disc") >= 0.75
    # The hits list follows the Detect dock's threshold, and a hit picked there is shown.
    shown_at_default = w.open_set.panel.hits.count()
    w.detection.panel.spin.setValue(0.99)
    assert w.open_set.panel.hits.count() < shown_at_default
    w.detection.panel.spin.setValue(0.05)
    assert w.open_set.panel.hits.count() >= shown_at_default
    first = w.open_set.panel.hits.item(0).data(0x0100)
    w.open_set.panel.hits.setCurrentRow(0)
    qtbot.waitUntil(lambda: w.image_view.key == first, timeout=10_000)

    # Find similar: a box drawn around a bright rectangle on a training image.
    key, sample = next((k, s) for k, s in w.samples.items()
                       if s.split == "train" and any(b.class_name == "bright_rect" for b in s.boxes))
    w.browser.select_key(key)
    qtbot.waitUntil(lambda: w.image_view.key == key and w.annotation.controller.editor is not None
                    and w.annotation.controller.editor.ann.key == key, timeout=10_000)
    box = next(b for b in sample.boxes if b.class_name == "bright_rect")
    w.annotation.controller.editor.add_box(box.x0, box.y0, box.x1, box.y1, "bright_rect")
    drawn = w.open_set.last_drawn_box()
    assert drawn is not None and drawn[1] == "bright_rect"
    np.testing.assert_allclose(drawn[0], [box.x0, box.y0, box.x1, box.y1])
    with qtbot.waitSignal(w.detection.detections_loaded, timeout=300_000):
        w.open_set.find_similar()
    assert w.detection.detections.classes == ["bright_rect"]
    w.detection.panel.set_threshold(w.detection.detections.threshold)
    qtbot.waitUntil(lambda: w.open_set.panel.hits.count() > 0, timeout=10_000)
    assert _share_of_hits_on(w, "bright_rect") >= 0.75


def test_find_needs_an_open_set_detector(qtbot, window, tmp_path) -> None:
    from tests.detector_graphs import write_constant_detector
    from tests.test_gui_detection import write_voc_set

    w = window
    open_and_wait(qtbot, w, write_voc_set(tmp_path / "voc"))
    w.models.set_model(write_constant_detector(tmp_path / "det", boxes=[[10, 10, 40, 40]], scores=[0.9],
                                               classes=[0], class_names=["a", "b"]))
    errors: list[str] = []
    w.show_error = errors.append  # type: ignore[method-assign]
    w.open_set.find("a")
    w.open_set.find_similar()
    assert len(errors) == 2 and all("open-set detector" in e for e in errors)
