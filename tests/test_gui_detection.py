"""Box detection in the workbench: the real main window (offscreen) and, end to end, a real local engine.

Focused checks use a hand-written detections folder (engine.detections.write_detections) on a small VOC set whose
outcomes and AP are worked out by hand below; the end-to-end test trains a tiny detector through the GUI, detects,
moves the threshold, accepts boxes as annotations, exports as COCO and reloads the export.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")

from app.gui.detection_metrics import DetectionMetricsView, detection_figures
from app.gui.features.detection import (
    FALSE_ALARM_COLOR,
    HIT_COLOR,
    MISSED_COLOR,
    UNLABELLED_COLOR,
    WRONG_CLASS_COLOR,
)
from app.gui.main_window import MainWindow
from engine.detections import DetectionItem, Truth, read_detections, write_detections
from tests.test_gui_workbench import open_and_wait

# name: (split, truth [(class, box)] or None for no labels, detections [(class, score, box)])
A1, A2, B3, A4 = (10, 10, 40, 40), (50, 50, 80, 80), (20, 20, 60, 60), (10, 10, 50, 50)
IMAGES = {
    "img1": ("test", [("a", A1)], [("a", 0.9, A1)]),  # hit
    "img2": ("test", [("a", A2)], [("a", 0.8, (5, 5, 20, 20))]),  # a false alarm, and the labelled box missed
    "img3": ("test", [("b", B3)], [("b", 0.6, B3), ("a", 0.3, B3)]),  # hit; the low "a" box only below 0.6
    "img4": ("train", [("a", A4)], [("b", 0.7, A4)]),  # wrong class (and missed); training split: no metrics
    "img5": (None, None, [("a", 0.95, (30, 30, 60, 60))]),  # no labels to judge by
}
# By hand, over the test split (img1-3), COCO's 101 recall points: class a has 2 labelled boxes, its boxes are
# 0.9 hit, 0.8 false, 0.3 false -> precision 1 up to recall 0.5 -> AP 51/101; class b: one box, found -> 1.0.
AP_A, AP_B = 51 / 101, 1.0
# At 0.5: rows labelled (a, b, background), columns detected; img2's box is background -> a, its truth a missed.
CONFUSION_AT_HALF = [[1, 0, 1], [0, 1, 0], [1, 0, 0]]


def write_voc_set(root: Path) -> Path:
    """A 100 x 100 VOC set of the IMAGES above (img5 without an XML: unlabelled)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    splits: dict[str, list[str]] = {}
    for name, (split, truth, _dets) in IMAGES.items():
        img = np.full((100, 100, 3), 120, np.uint8)
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.png"), img)
        if split:
            splits.setdefault(split, []).append(name)
        if truth is None:
            continue
        objects = "".join(f"<object><name>{c}</name><bndbox><xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin>"
                          f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for c, b in truth)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>100</width><height>100</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    for split, names in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_hand_detections(folder: Path, window: MainWindow) -> Path:
    """The IMAGES' detections under the open dataset's own sample keys."""
    by_name = {s.image_path.stem: k for k, s in window.samples.items()}
    items = {}
    for name, (split, truth, dets) in IMAGES.items():
        dets = sorted(dets, key=lambda d: -d[1])
        items[by_name[name]] = DetectionItem(
            path=str(window.samples[by_name[name]].image_path), split=split,
            boxes=np.asarray([d[2] for d in dets], np.float32).reshape(-1, 4),
            scores=np.asarray([d[1] for d in dets], np.float32), classes=[d[0] for d in dets],
            truth=None if truth is None else Truth(np.asarray([b for _, b in truth], np.float32).reshape(-1, 4),
                                                   [c for c, _ in truth]))
    write_detections(folder, model="/models/hand", classes=["a", "b"], threshold=0.5, provider="hand",
                     items=items, data=window.dataset.root, category=None)
    return folder


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


@pytest.fixture
def detected(qtbot, window, tmp_path):
    """The window on the VOC set with the hand-written detections loaded."""
    root = write_voc_set(tmp_path / "voc")
    open_and_wait(qtbot, window, root)
    folder = write_hand_detections(tmp_path / "dets", window)
    with qtbot.waitSignal(window.detection.detections_loaded, timeout=10_000):
        window.detection.load_detections(folder)
    # pycocotools runs off the GUI thread with stdout redirected: let it finish inside the test
    qtbot.waitUntil(lambda: window.detection.figures is not None, timeout=10_000)
    return window


def _show(qtbot, w: MainWindow, name: str) -> str:
    key = next(k for k, s in w.samples.items() if s.image_path.stem == name)
    w.browser.select_key(key)
    qtbot.waitUntil(lambda: w.image_view.image_size is not None and w.image_view.key == key, timeout=10_000)
    return key


def _drawn(w: MainWindow) -> list[tuple[str, tuple[int, int, int], bool]]:
    return sorted((b.text, b.color, b.dashed) for b in w.image_view.overlay_boxes)


def test_boxes_are_coloured_by_outcome_and_the_threshold_redraws_and_recounts(qtbot, detected):
    w = detected
    det = w.detection
    assert det.panel.threshold() == pytest.approx(0.5)  # the file's threshold
    assert det.counts.astuple() == (5, 2, 1, 1, 2, 1)  # boxes, hits, wrong class, false alarms, missed, unlabelled
    _show(qtbot, w, "img1")
    assert _drawn(w) == [("a 0.90", HIT_COLOR, False)]
    _show(qtbot, w, "img2")
    assert _drawn(w) == [("a 0.80", FALSE_ALARM_COLOR, False), ("missed a", MISSED_COLOR, True)]
    assert "1 false alarm, 1 missed" in det.panel.image_counts.text()
    _show(qtbot, w, "img4")
    assert _drawn(w) == [("b 0.70", WRONG_CLASS_COLOR, False), ("missed a", MISSED_COLOR, True)]
    _show(qtbot, w, "img5")
    assert _drawn(w) == [("a 0.95", UNLABELLED_COLOR, False)]
    # the view draws one rect per box plus its tag
    assert len(w.image_view.box_items) == 2

    _show(qtbot, w, "img3")
    assert _drawn(w) == [("b 0.60", HIT_COLOR, False)]
    det.panel.spin.setValue(0.2)  # live: the low "a" box on img3 appears as a false alarm
    assert det.panel.slider.value() == 200
    assert _drawn(w) == [("a 0.30", FALSE_ALARM_COLOR, False), ("b 0.60", HIT_COLOR, False)]
    assert det.counts.astuple() == (6, 2, 1, 2, 2, 1)
    assert det.panel.table.rowCount() == 2
    det.panel.slider.setValue(850)
    assert det.panel.spin.value() == pytest.approx(0.85)
    assert _drawn(w) == [("missed b", MISSED_COLOR, True)]
    assert det.counts.astuple() == (2, 1, 0, 0, 3, 1)
    det.panel.reset_button.click()
    assert det.panel.threshold() == pytest.approx(0.5)


def test_accepting_detections_as_annotations_never_duplicates(qtbot, detected):
    w = detected
    det, controller = w.detection, w.annotation.controller
    key = _show(qtbot, w, "img3")
    qtbot.waitUntil(lambda: controller.editor is not None and controller.editor.ann.key == key, timeout=10_000)
    # The image's own label is there before anything is accepted: accepting never drops it from exports.
    own = [(s.kind, s.class_name, s.source) for s in controller.editor.shapes]
    assert own == [("box", "b", "dataset")]
    det.panel.table.selectRow(0)  # the "b" box on the labelled one: the same box, skipped
    assert det.accept_selected() == 0
    det.panel.spin.setValue(0.2)  # now the low "a" box on the same place is in the table too
    det.panel.table.selectRow(1)
    assert det.accept_selected() == 1
    shapes = controller.editor.shapes
    assert [(s.kind, s.class_name, s.source) for s in shapes] == [("box", "b", "dataset"), ("box", "a", "detector")]
    assert shapes[1].points == [[20.0, 20.0], [60.0, 60.0]]
    assert [sh.id for sh in controller.shapes()] == [sh.id for sh in shapes]  # what the Annotate overlay draws
    assert det.accept_image() == 0  # both again: skipped

    added: list[int] = []
    det.accept_dataset(on_done=added.append)  # the dataset's 6 boxes at 0.2
    qtbot.waitUntil(lambda: bool(added), timeout=10_000)
    # img1's hit and img3's two are there already; img2's false alarm, img4's "b" (its label is "a") and img5's
    # box (no labels) are new.
    assert added == [3]
    assert sorted(s.class_name for s in controller.editor.shapes) == ["a", "b"]  # the shown image reloaded
    store = controller.store
    annotated = {w.samples[k].image_path.stem: k for k in store.annotated_keys()}
    assert sorted(annotated) == ["img2", "img3", "img4", "img5"]  # img1 got nothing new: no file written
    img4 = store.load(annotated["img4"], 100, 100)
    assert [(s.class_name, s.source) for s in img4.shapes] == [("a", "dataset"), ("b", "detector")]
    again: list[int] = []
    det.accept_dataset(on_done=again.append)
    qtbot.waitUntil(lambda: bool(again), timeout=10_000)
    assert again == [0]


def test_metrics_view_shows_known_ap_curves_and_the_confusion_matrix(qtbot, detected):
    w = detected
    view = w.detection.panel.metrics
    qtbot.waitUntil(lambda: view.confusion_table.rowCount() == 3, timeout=10_000)
    assert "3 labelled test-split images" in view.scope_label.text()
    assert view.ap_rows() == {"a": f"{AP_A:.3f}", "b": f"{AP_B:.3f}"}
    assert f"mAP@0.5 {(AP_A + AP_B) / 2:.3f}" in view.summary_label.text()
    assert f"mAP@[.5:.95] {(AP_A + AP_B) / 2:.3f}" in view.summary_label.text()  # exact boxes: every IoU
    assert view.confusion().tolist() == CONFUSION_AT_HALF
    recall, precision = view.curves()["a"]
    assert max(r for r, p in zip(recall, precision, strict=True) if p > 0) == pytest.approx(0.5)
    w.detection.panel.spin.setValue(0.2)  # img3's low "a" box: another background row, column a
    qtbot.waitUntil(lambda: view.confusion().tolist() == [[1, 0, 1], [0, 1, 0], [2, 0, 0]], timeout=10_000)


def test_figures_come_from_pycocotools_on_the_test_split_only(tmp_path, qtbot):
    items = {f"k{i}": DetectionItem(path=f"/x/{i}.png", boxes=np.asarray([[0, 0, 10, 10]], np.float32),
                                    scores=np.asarray([0.9], np.float32), classes=["a"], split=split,
                                    truth=Truth(np.asarray([[0, 0, 10, 10]], np.float32), ["a"]))
             for i, split in enumerate(["test", "train", None])}
    write_detections(tmp_path, model="/m", classes=["a"], threshold=0.5, provider="cpu", items=items, data="/x")
    figures = detection_figures(read_detections(tmp_path))
    assert figures.keys == ["k0"]
    assert figures.metrics["map50"] == pytest.approx(1.0)
    view = DetectionMetricsView()
    qtbot.addWidget(view)
    view.set_metrics(figures.metrics)
    assert view.ap_rows() == {"a": "1.000"}


def test_score_dataset_points_a_detector_to_detect(qtbot, window, tmp_path):
    from tests.detector_graphs import write_constant_detector

    root = write_voc_set(tmp_path / "voc")
    open_and_wait(qtbot, window, root)
    model = write_constant_detector(tmp_path / "det", boxes=[[10, 10, 40, 40]], scores=[0.9], classes=[0],
                                    class_names=["a", "b"])
    window.models.set_model(model)
    window.scoring.score_dataset()
    assert "Detect defects" in window.banner.text()
    texts = [a.text() for a in window.menuBar().actions()[1].menu().actions()]
    assert any("Detect defects" in t for t in texts) and any("Train &detector" in t for t in texts)


def test_accepted_boxes_survive_a_coco_export_and_reload(qtbot, detected, tmp_path):
    from engine.datasets import load_dataset

    w = detected
    added: list[int] = []
    # At the file's 0.5: img1-5 one box each; img1's and img3's are their own labels already.
    w.detection.accept_dataset(on_done=added.append)
    qtbot.waitUntil(lambda: bool(added), timeout=10_000)
    assert added == [3]
    reports: list = []
    w.export.export(tmp_path / "out", "coco", on_done=reports.append)
    qtbot.waitUntil(lambda: bool(reports), timeout=20_000)
    assert reports[0].ok, reports[0].summary()
    back = load_dataset(tmp_path / "out")
    assert back.format == "coco"
    boxes = {s.image_path.stem: [(b.class_name, (b.x0, b.y0, b.x1, b.y1)) for b in s.boxes] for s in back.samples}
    assert boxes["img5"] == [("a", (30.0, 30.0, 60.0, 60.0))]  # was unlabelled: auto-labelled by the detector
    # The image's own label stays beside the accepted false alarm; an image given nothing keeps its own.
    assert sorted(boxes["img2"]) == [("a", (5.0, 5.0, 20.0, 20.0)), ("a", (50.0, 50.0, 80.0, 80.0))]
    assert boxes["img1"] == [("a", (10.0, 10.0, 40.0, 40.0))]
    assert {s.image_path.stem: s.split for s in back.samples}["img4"] == "train"  # the split survives


def test_train_detect_threshold_accept_and_export_through_a_real_engine(qtbot, window, tmp_path):
    """Model ▸ Train detector on a small generated box set, Detect with the model it made, move the threshold,
    accept all above it as annotations, export as COCO and find the accepted labels in the reloaded export."""
    pytest.importorskip("torch", reason="training needs torch")
    from app.gui.engine_link import EngineSettings
    from engine.datasets import load_dataset
    from tests.test_detector_train import CLASSES, write_voc

    w, det = window, window.detection
    root = write_voc(tmp_path / "shapes", {"train": 24, "val": 2, "test": 6}, seed=2)
    open_and_wait(qtbot, w, root)
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)

    det.detector_job_params = {"epochs": 12, "image_size": 128, "batch_size": 8, "lr": 3e-3, "device": "cpu"}
    submitted: list[str] = []
    det.train_detector(on_submitted=submitted.append)
    qtbot.waitUntil(lambda: bool(submitted), timeout=60_000)
    with qtbot.waitSignal(w.link.job_finished, timeout=600_000,
                          check_params_cb=lambda job: job.id == submitted[0]) as finished:
        pass
    job = finished.args[0]
    assert job.state == "succeeded", job.error
    assert Path(job.params["data"]).parent.name == "detector_data"  # the labels as exported here (COCO)
    qtbot.waitUntil(lambda: w.models.model_info is not None and w.models.model_info.task == "detector",
                    timeout=30_000)  # the new detector is the active model
    qtbot.waitUntil(lambda: job.id in w.models.panel._job_items, timeout=10_000)  # and listed in the panel

    with qtbot.waitSignal(det.detections_loaded, timeout=300_000):
        det.detect()
    dets = det.detections
    assert set(dets.items) == set(w.samples) and dets.classes == CLASSES
    assert all(it.truth is not None for it in dets.items.values())
    scores = np.sort(np.concatenate([it.scores for it in dets.items.values()]))[::-1]
    assert len(scores) >= 2 and scores[0] > scores[-1], scores

    # the threshold redraws and recounts without running the model again
    det.panel.spin.setValue(0.0)
    assert det.counts.boxes == len(scores)
    busiest = max(dets.items, key=lambda k: len(dets.items[k].scores))
    w.browser.select_key(busiest)
    qtbot.waitUntil(lambda: w.image_view.key == busiest and w.image_view.image_size is not None, timeout=10_000)
    drawn_all = [b for b in w.image_view.overlay_boxes if not b.dashed]
    assert len(drawn_all) == len(dets.items[busiest].scores)
    det.panel.spin.setValue(float(scores[0]))
    assert det.counts.boxes == int((scores >= np.float32(det.threshold)).sum()) < len(scores)
    assert len([b for b in w.image_view.overlay_boxes if not b.dashed]) < len(drawn_all)
    qtbot.waitUntil(lambda: det.figures is not None, timeout=60_000)
    assert set(det.panel.metrics.ap_rows()) == set(CLASSES)

    # auto-label the dataset at a threshold that keeps a few boxes
    det.panel.spin.setValue(float(scores[min(5, len(scores) - 1)]))
    kept = {k: len(it.above(det.threshold)) for k, it in dets.items.items()}
    added: list[int] = []
    det.accept_dataset(on_done=added.append)
    qtbot.waitUntil(lambda: bool(added), timeout=30_000)
    assert 0 < added[0] <= sum(kept.values())
    reports: list = []
    w.export.export(tmp_path / "exported", "coco", on_done=reports.append)
    qtbot.waitUntil(lambda: bool(reports), timeout=60_000)
    back = {s.image_path.name: s for s in load_dataset(tmp_path / "exported").samples}
    store = w.annotation.controller.store
    annotated = store.annotated_keys()
    assert annotated and set(annotated) <= {k for k, n in kept.items() if n}
    for key in annotated:
        ann = store.load(key, 1, 1)
        sample = back[w.samples[key].image_path.name]
        assert sorted(b.class_name for b in sample.boxes) == sorted(s.class_name for s in ann.shapes)
        # the image's own labels, then what the detector added
        own = [sh for sh in ann.shapes if sh.source == "dataset"]
        assert len(own) == len(w.samples[key].boxes) and "detector" in {s.source for s in ann.shapes}
