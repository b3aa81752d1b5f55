"""The torch-free detector runtime (engine.runtime.detector): DefectScope's own graph interface and detectors brought
from elsewhere, tiling of large images, the model-format rows, COCO metrics, and `defectscope eval` / `infer` on a
detector. Every detector here is an ONNX graph the test builds itself (tests/detector_graphs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from engine.detections import read_detections
from engine.errors import ModelError
from engine.evaluate import evaluate
from engine.infer import infer
from engine.metrics.detection import detection_metrics
from engine.runtime.detector import Detector
from engine.runtime.model_format import is_model_folder, open_model, read_model_info
from engine.runtime.tiling import merge_detections, tile_windows
from tests.detector_graphs import (
    write_blob_detector,
    write_boxes_scores_classes_detector,
    write_constant_detector,
    write_yolo_detector,
)
from tests.test_cli import assert_clean_error, run_cli
from tests.test_detection_data import _voc

REPO = Path(__file__).resolve().parents[1]


def _centres(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def _spot(h: int, w: int, x: int, y: int, size: int = 20) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[y:y + size, x:x + size] = 255
    return img


# ------------------------------------------------------------------------------------------- format and runtime
def test_detector_folders_are_model_formats(tmp_path):
    own = write_blob_detector(tmp_path / "own")
    ext = write_yolo_detector(tmp_path / "ext")
    info = read_model_info(own)
    assert (info.task, info.kind, info.threshold, info.score_units) == ("detector", "detector", 0.5, "confidence")
    assert read_model_info(ext).kind == "external_detector" and is_model_folder(ext)
    scorer = open_model(own)  # a detector scores an image by its most confident box
    score, amap = scorer.score_image(_spot(120, 160, 50, 40))
    assert score == pytest.approx(0.9) and amap.shape == (120, 160) and amap[50, 60] == pytest.approx(0.9)
    assert scorer.score_image(np.zeros((120, 160, 3), np.uint8))[0] == 0.0


def test_own_detector_boxes_are_in_original_pixels_and_provider_is_reported(tmp_path):
    det = Detector(write_blob_detector(tmp_path / "d", input_size=256))
    assert det.provider in ort.get_available_providers()
    boxes, scores, classes = det.detect(_spot(200, 240, 100, 50))  # resized by 256/240 inside the graph
    assert len(boxes) >= 1 and classes.tolist() == [0] * len(boxes) and scores.dtype == np.float32
    assert np.all(np.abs(_centres(boxes) - [110, 60]) < 16)
    none = det.detect(np.zeros((200, 240, 3), np.uint8))
    assert none[0].shape == (0, 4) and none[2].dtype == np.int64


def test_a_20px_defect_on_a_6000x4500_image_is_found_by_tiling(tmp_path):
    det = Detector(write_blob_detector(tmp_path / "d", input_size=256))
    image = _spot(4500, 6000, 3210, 2005)
    assert len(det.graph.run(image)[0]) == 0  # one pass over the whole image shrinks the defect away
    boxes = det.detect(image)[0]
    assert len(boxes) >= 1 and np.all(np.abs(_centres(boxes) - [3220, 2015]) < 20), boxes
    assert any("tile by tile" in n for n in det.notes)


def test_a_defect_in_the_overlap_of_two_tiles_is_reported_once(tmp_path):
    det = Detector(write_blob_detector(tmp_path / "d", input_size=256))
    windows = tile_windows(900, 1200, 256)
    assert windows[0] == (0, 0, 256, 256) and windows[1][0] < 256  # the first two tiles overlap
    x = windows[1][0] + 10  # inside both
    single = det.detect(_spot(256, 256, x - windows[1][0] + 50, 100))[0]
    boxes = det.detect(_spot(900, 1200, x, 100))[0]
    assert 1 <= len(boxes) <= len(single)
    merged = merge_detections(np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], np.float32),
                              np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 0, 1]), 0.5, 10)
    assert merged[1].tolist() == pytest.approx([0.9, 0.7]) and merged[2].tolist() == [0, 1]


@pytest.mark.parametrize("transposed", [False, True], ids=["yolov5-layout", "yolov8-layout"])
def test_a_yolo_style_detector_brought_from_elsewhere(tmp_path, transposed):
    det = Detector(write_yolo_detector(tmp_path / "y", size=320, class_names=["pore", "crack"],
                                       transposed=transposed))
    image = _spot(480, 640, 400, 200, size=40)  # letterboxed by 0.5 into 320 x 320
    boxes, scores, classes = det.detect(image)
    assert len(boxes) >= 1 and set(classes.tolist()) == {1}
    assert np.all(np.abs(_centres(boxes) - [420, 220]) < 24), boxes
    assert scores.max() == pytest.approx(0.9, abs=1e-5)
    assert det.classes == ["pore", "crack"] and det.provider in ort.get_available_providers()


def test_an_external_boxes_scores_classes_detector_nhwc_stretched(tmp_path):
    det = Detector(write_boxes_scores_classes_detector(tmp_path / "e", size=(240, 320)))
    boxes, scores, classes = det.detect(np.zeros((480, 640, 3), np.uint8))
    # 0..1 boxes of the stretched 320 x 240 input, back in pixels of the 640 x 480 image
    np.testing.assert_allclose(boxes, [[160, 120, 320, 240], [0, 240, 64, 288]], atol=1e-3)
    assert scores.tolist() == pytest.approx([0.9, 0.6]) and classes.tolist() == [0, 1]
    assert [det.classes[c] for c in classes] == ["a", "b"]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"input": {"size": [320, 320], "layout": "NCWH"}}, "input.layout must be one of NCHW, NHWC"),
    ({"model": "missing.onnx"}, "model: missing.onnx not found"),
    ({"classes": []}, "classes must be a non-empty list"),
    ({"output": {"layout": "yolo", "name": "nope"}}, "output names ['nope'] are not outputs"),
])
def test_bad_external_description_names_file_and_field(tmp_path, change, fragment):
    folder = write_yolo_detector(tmp_path / "y")
    path = folder / "external_detector.json"
    desc = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps(desc))
    with pytest.raises(ModelError) as exc:
        Detector(folder)
    assert "external_detector.json" in str(exc.value) and fragment in str(exc.value)


def test_inference_path_for_detectors_never_loads_torch():
    code = ("import sys\nimport engine.runtime.detector, engine.runtime.external_detector, engine.detection_eval\n"
            "import engine.detection_infer, engine.metrics.detection, engine.datasets.detection, engine.evaluate\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainers', 'PySide6'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------- metrics
def test_coco_metrics_per_class():
    gt = [(np.array([[10, 10, 50, 50], [60, 60, 90, 90]]), np.array([0, 1])),
          (np.array([[5, 5, 25, 25]]), np.array([0]))]
    perfect = [(b.astype(np.float32), np.ones(len(b)), labels) for b, labels in gt]
    m = detection_metrics(gt, perfect, ["a", "b", "c"])
    assert m["map50"] == pytest.approx(1.0) and m["map50_95"] == pytest.approx(1.0)
    assert m["ap50_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": None}
    # class b missed, one class-a box off by a few pixels: AP@0.5 keeps it, the stricter IoUs do not
    pred = [(np.array([[10, 10, 50, 44]], np.float32), np.array([0.9]), np.array([0])),
            (np.array([[5, 5, 25, 25]], np.float32), np.array([0.8]), np.array([0]))]
    m = detection_metrics(gt, pred, ["a", "b", "c"])
    assert m["ap50_per_class"]["a"] == pytest.approx(1.0) and m["ap50_per_class"]["b"] == 0.0
    assert m["map50"] == pytest.approx(0.5) and m["map50_95"] < 0.5
    empty = detection_metrics(gt, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))] * 2, ["a", "b"])
    assert empty["map50"] == 0.0
    curves = detection_metrics(gt, pred, ["a", "b", "c"], curves=True)["pr50_per_class"]
    assert set(curves) == {"a", "b"} and len(curves["a"]["recall"]) == 101
    assert min(curves["a"]["precision"]) == 1.0 and max(curves["b"]["precision"]) == 0.0


# --------------------------------------------------------------------------------------------- eval and infer
@pytest.fixture
def boxed_set(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    for i in range(20):
        _voc(root, f"img{i:02d}", [("dent", 11, 11, 30, 20), ("scratch", 40, 30, 60, 45)])
    return root


def test_eval_of_a_detector_writes_coco_metrics(tmp_path, boxed_set):
    exact = write_constant_detector(tmp_path / "exact", [[10, 10, 30, 20], [39, 29, 60, 45]], [0.9, 0.8], [0, 1],
                                    ["dent", "scratch"])
    report = tmp_path / "r.json"
    r = evaluate(exact, boxed_set, report_path=report)
    saved = json.loads(report.read_text())
    for key in ("map50", "map50_95", "ap50_per_class", "latency_ms", "provider", "n_test"):
        assert key in saved
    assert r["n_test"] == 4  # the detection split's test part of 20 images
    assert r["map50"] == pytest.approx(1.0) and r["map50_95"] == pytest.approx(1.0)
    assert r["provider"] in ort.get_available_providers() and r["latency_ms"] > 0
    # the same detector with its scratch box misplaced: scratch AP drops to 0, dent stays
    wrong = write_constant_detector(tmp_path / "wrong", [[10, 10, 30, 20], [0, 0, 15, 8]], [0.9, 0.8], [0, 1],
                                    ["dent", "scratch"])
    r = evaluate(wrong, boxed_set)
    assert r["ap50_per_class"] == {"dent": pytest.approx(1.0), "scratch": 0.0}


def _confusion(tmp_path: Path, boxed_set: Path, name: str, boxes: list, scores: list, classes: list) -> list:
    det = write_constant_detector(tmp_path / name, boxes, scores, classes, ["dent", "scratch"])
    cm = evaluate(det, boxed_set)["confusion_matrix"]
    assert cm["classes"] == ["dent", "scratch", "background"] and cm["threshold"] == 0.5
    return cm["matrix"]


def test_eval_of_a_detector_reports_the_class_confusion_matrix(tmp_path, boxed_set):
    # rows: labelled dent, scratch, background (a box on no defect); columns: detected dent, scratch, background
    # (a defect no box took); 4 test images with one dent and one scratch each
    exact = _confusion(tmp_path, boxed_set, "exact", [[10, 10, 30, 20], [39, 29, 60, 45]], [0.9, 0.8], [0, 1])
    assert exact == [[4, 0, 0], [0, 4, 0], [0, 0, 0]]
    misnamed = _confusion(tmp_path, boxed_set, "misnamed", [[10, 10, 30, 20], [39, 29, 60, 45]], [0.9, 0.8], [0, 0])
    assert misnamed == [[4, 0, 0], [4, 0, 0], [0, 0, 0]]  # the scratch found but called a dent
    misplaced = _confusion(tmp_path, boxed_set, "misplaced", [[10, 10, 30, 20], [0, 0, 15, 8]], [0.9, 0.8], [0, 1])
    assert misplaced == [[4, 0, 0], [0, 0, 4], [0, 4, 0]]  # a scratch alarm on nothing, the scratch missed
    # the matrix is taken at the model's score threshold (0.5): a right box below it is a miss
    unsure = _confusion(tmp_path, boxed_set, "unsure", [[10, 10, 30, 20], [39, 29, 60, 45]], [0.9, 0.3], [0, 1])
    assert unsure == [[4, 0, 0], [0, 0, 4], [0, 0, 0]]


def test_cli_eval_and_infer_with_a_detector(tmp_path, boxed_set):
    det = write_constant_detector(tmp_path / "det", [[10, 10, 30, 20], [39, 29, 60, 45]], [0.9, 0.3], [0, 1],
                                  ["dent", "scratch"])
    report = tmp_path / "r.json"
    proc = run_cli("eval", "--model", str(det), "--data", str(boxed_set), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "mAP@0.5 1.000" in proc.stdout and json.loads(report.read_text())["n_test"] == 4
    out = tmp_path / "out"
    proc = run_cli("infer", "--model", str(det), str(boxed_set / "images"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "20 images searched" in proc.stdout  # the printed summary stays
    saved = read_detections(out)  # the one detections schema, keyed by output name
    assert sorted(saved.items) == [f"img{i:02d}" for i in range(20)] and saved.threshold == 0.5
    assert saved.classes == ["dent", "scratch"] and not saved.data and not saved.errors
    first = saved.items["img00"]
    assert first.classes == ["dent", "scratch"] and first.scores.tolist() == pytest.approx([0.9, 0.3])
    assert first.truth is None and first.split is None and first.extra == {"drawn": "img00_boxes.png"}
    drawn = cv2.imread(str(out / first.extra["drawn"]))
    assert drawn.shape == (48, 64, 3)
    # only the box at or above the threshold is drawn
    assert np.abs(drawn[10, 15].astype(int) - 90).max() > 30 and np.abs(drawn[30, 50].astype(int) - 90).max() < 5


def test_cli_eval_of_a_set_without_boxes_is_one_clear_line(tmp_path):
    root = tmp_path / "clean"
    for i in range(3):
        _voc(root, f"c{i}", [])
    det = write_constant_detector(tmp_path / "det", [[1, 1, 5, 5]], [0.9], [0], ["dent"])
    proc = run_cli("eval", "--model", str(det), "--data", str(root))
    assert_clean_error(proc, str(root), "no boxes to detect")


def test_infer_reports_unreadable_images_and_goes_on(tmp_path):
    det = write_constant_detector(tmp_path / "det", [[1, 1, 5, 5]], [0.9], [0], ["dent"])
    good = tmp_path / "in" / "a.png"
    good.parent.mkdir()
    cv2.imwrite(str(good), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "in" / "b.png").write_bytes(b"not a png")
    summary = infer(det, [tmp_path / "in"], tmp_path / "out")
    assert [Path(r["path"]).name for r in summary["results"]] == ["a.png"]
    assert [Path(e["path"]).name for e in summary["errors"]] == ["b.png"]
    saved = read_detections(tmp_path / "out")
    assert list(saved.items) == ["a"] and list(saved.errors) == ["b"] and "b.png" in saved.errors["b"]


def test_infer_and_eval_with_a_detector_brought_from_elsewhere(tmp_path, boxed_set):
    det = write_yolo_detector(tmp_path / "y", size=320, class_names=["dent", "scratch"])
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "spot.png"), _spot(480, 640, 400, 200, size=40))
    summary = infer(det, [tmp_path / "in"], tmp_path / "out")
    saved = read_detections(tmp_path / "out")
    assert saved.classes == ["dent", "scratch"] and saved.provider == summary["provider"]
    spot = saved.items["spot"]
    assert len(spot.boxes) >= 1 and set(spot.classes) == {"scratch"}
    assert (tmp_path / "out" / spot.extra["drawn"]).is_file()
    # on the flat grey test images it finds nothing: every labelled box is a miss (the background column)
    cm = evaluate(det, boxed_set)["confusion_matrix"]
    assert cm["classes"] == ["dent", "scratch", "background"] and cm["matrix"] == [[0, 0, 4], [0, 0, 4], [0, 0, 0]]
