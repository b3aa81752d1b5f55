"""Detections against ground truth at a threshold (engine.metrics.detection_match) and the detections schema
(engine.detections): the counts the workbench draws and the file it reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.detections import DETECTIONS_FILE, DetectionItem, Truth, read_detections, write_detections
from engine.errors import DefectScopeError
from engine.metrics.detection_match import (
    FALSE_ALARM,
    HIT,
    WRONG_CLASS,
    box_iou,
    confusion_matrix,
    match_image,
)

TRUTH = np.array([[10, 10, 50, 50], [100, 100, 140, 160]], np.float32)


def test_box_iou_known_values() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_hit_wrong_class_false_alarm_and_miss() -> None:
    boxes = np.array([[12, 11, 50, 52], [101, 99, 140, 158], [200, 200, 220, 220], [11, 10, 49, 50]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.2], np.float32)
    m = match_image(TRUTH, ["scratch", "pit"], boxes, scores, ["scratch", "scratch", "pit", "scratch"], 0.5)
    assert list(m.kept) == [0, 1, 2]  # the 0.2 box is under the threshold
    assert m.outcomes == [HIT, WRONG_CLASS, FALSE_ALARM]
    assert m.matched_truth == [0, 1, -1]
    assert list(m.found) == [True, False]
    assert (m.n_hits, m.n_false_alarms, m.n_misses) == (1, 2, 1)
    # Lowering the threshold lets the duplicate in: the labelled box is taken, so it is a false alarm.
    low = match_image(TRUTH, ["scratch", "pit"], boxes, scores, ["scratch", "scratch", "pit", "scratch"], 0.1)
    assert low.outcomes[-1] == FALSE_ALARM


def test_same_class_preferred_over_higher_iou_of_other_class() -> None:
    truth = np.array([[0, 0, 40, 40], [2, 2, 42, 42]], np.float32)
    m = match_image(truth, ["pit", "scratch"], np.array([[1, 1, 41, 41]], np.float32), np.array([0.9]),
                    ["scratch"], 0.5)
    assert m.outcomes == [HIT] and m.matched_truth == [1] and list(m.found) == [False, True]


def test_confusion_matrix_rows_truth_columns_detected() -> None:
    classes = ["scratch", "pit"]
    images = [(TRUTH, ["scratch", "pit"], np.array([[12, 11, 50, 52], [101, 99, 140, 158], [200, 200, 220, 220]]),
               np.array([0.9, 0.8, 0.7]), ["scratch", "scratch", "pit"]),
              (np.zeros((0, 4)), [], np.zeros((0, 4)), np.zeros(0), [])]
    cm = confusion_matrix(images, classes, 0.5)
    expected = np.array([[1, 0, 0],   # scratch: found as scratch
                         [1, 0, 0],   # pit: called scratch
                         [0, 1, 0]])  # a pit box on no defect
    np.testing.assert_array_equal(cm, expected)
    # Threshold above every score: all labelled defects are missed.
    np.testing.assert_array_equal(confusion_matrix(images, classes, 0.95)[:, 2], [1, 1, 0])


def test_detections_round_trip_and_bad_file(tmp_path) -> None:
    item = DetectionItem(path="/x/a.png", boxes=TRUTH, scores=np.array([0.9, 0.3], np.float32),
                         classes=["scratch", "pit"], split="test", latency_ms=3.2,
                         truth=Truth(TRUTH[:1], ["scratch"]), extra={"drawn": "a_boxes.png"})
    write_detections(tmp_path, model=tmp_path, classes=["scratch", "pit"], threshold=0.4, provider="CPU",
                     items={"a": item}, errors={"b": "b.png: cannot decode"}, data=tmp_path)
    d = read_detections(tmp_path)
    got = d.items["a"]
    np.testing.assert_allclose(got.boxes, TRUTH)
    assert got.classes == ["scratch", "pit"] and got.split == "test" and got.extra == {"drawn": "a_boxes.png"}
    assert got.truth is not None and got.truth.classes == ["scratch"]
    assert list(got.above(0.4)) == [0] and d.errors == {"b": "b.png: cannot decode"}
    assert d.is_for(tmp_path, None) and not d.is_for(tmp_path / "other", None)

    raw = json.loads((tmp_path / DETECTIONS_FILE).read_text())
    raw["items"]["a"]["scores"] = [0.9]
    (tmp_path / DETECTIONS_FILE).write_text(json.dumps(raw))
    with pytest.raises(DefectScopeError, match=r"items\.a: boxes, scores and classes differ"):
        read_detections(tmp_path)
    del raw["classes"]
    (tmp_path / DETECTIONS_FILE).write_text(json.dumps(raw))
    with pytest.raises(DefectScopeError, match="field 'classes' is missing"):
        read_detections(tmp_path)
