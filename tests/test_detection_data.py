"""Detection data (engine.datasets.detection): boxes from every labelled format and from masks, the format's own
split or the stable stratified 70/10/20 rule, the committed NEU-DET split, and bad input as per-file issues."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.datasets.detection import load_detection_set
from engine.datasets.detection_split import detection_split, primary_class
from engine.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
SPLIT_DIR = REPO / "engine" / "datasets" / "splits"


def _image(path: Path, w: int = 64, h: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 90, np.uint8)
    cv2.imwrite(str(path), img)
    return path


def _voc(root: Path, name: str, objects: list[tuple[str, int, int, int, int]], w: int = 64, h: int = 48) -> Path:
    _image(root / "images" / f"{name}.png", w, h)
    objs = "".join(
        f"<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        "</bndbox></object>" for c, x0, y0, x1, y1 in objects)
    xml = root / "annotations" / f"{name}.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_text(f"<annotation><filename>{name}.png</filename><size><width>{w}</width><height>{h}</height>"
                   f"<depth>3</depth></size>{objs}</annotation>")
    return xml


# ------------------------------------------------------------------------------------------------- the split rule
def test_split_is_70_10_20_per_class_whatever_the_order():
    names = [f"{c}_{i}.jpg" for c in ("a", "b", "rare") for i in range(300 if c != "rare" else 20)]
    strata = {n: n.split("_")[0] for n in names}
    split = detection_split(names, strata)
    shuffled = names[:]
    random.Random(3).shuffle(shuffled)
    assert detection_split(shuffled, strata) == split
    for c in ("a", "b"):
        counts = Counter(split[n] for n in names if strata[n] == c)
        assert counts == {"train": 210, "validation": 30, "test": 60}
    rare = Counter(split[n] for n in names if strata[n] == "rare")
    assert rare == {"train": 14, "validation": 2, "test": 4}


def test_split_is_pinned_across_machines():
    # sha1 of the name, never Python's salted hash(): these assignments must never change
    split = detection_split([f"img_{i}.png" for i in range(10)])
    assert [split[f"img_{i}.png"] for i in range(10)] == [
        "train", "test", "train", "train", "validation", "test", "train", "train", "train", "train"]


def test_primary_class_is_the_most_frequent_then_by_name():
    assert primary_class(["b", "a", "b"]) == "b"
    assert primary_class(["b", "a"]) == "a"
    assert primary_class([]) == ""


# --------------------------------------------------------------------------------------------------- the formats
def test_voc_without_split_gets_the_rule_and_boxes_in_pixels(tmp_path):
    for i in range(20):
        _voc(tmp_path, f"s{i:02d}", [("scratch" if i % 2 else "dent", 5, 6, 25, 30)])
    data = load_detection_set(tmp_path)
    assert data.classes == ["dent", "scratch"]
    assert len(data.samples) == 20 and not data.issues
    assert Counter(s.split for s in data.samples) == {"train": 14, "validation": 2, "test": 4}
    s = data.samples[0]
    # VOC's 1-based inclusive corners become 0-based x0, y0 with exclusive x1, y1
    np.testing.assert_allclose(s.boxes, [[4, 5, 25, 30]])
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    assert data.classes[int(s.labels[0])] == ("dent" if s.image_path.stem == "s00" else "scratch")


def test_coco_own_split_is_honoured(tmp_path):
    for split, names in (("train", ["a", "b", "c"]), ("val", ["d"])):
        images, anns = [], []
        for k, name in enumerate(names, 1):
            _image(tmp_path / split / f"{name}.png")
            images.append({"id": k, "file_name": f"{name}.png", "width": 64, "height": 48})
            anns.append({"id": k, "image_id": k, "category_id": 7, "bbox": [10, 10, 20, 12], "area": 240,
                         "iscrowd": 0})
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "pore"}]}))
    data = load_detection_set(tmp_path)
    assert data.classes == ["pore"]
    by_name = {s.image_path.stem: s.split for s in data.samples}
    assert by_name == {"a": "train", "b": "train", "c": "train", "d": "validation"}
    np.testing.assert_allclose(data.samples[0].boxes, [[10, 10, 30, 22]])


def test_yolo_split_folders_are_honoured(tmp_path):
    (tmp_path / "classes.txt").write_text("crack\nhole\n")
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for i in range(n):
            _image(tmp_path / "images" / split / f"{split}{i}.png", 100, 50)
            lab = tmp_path / "labels" / split / f"{split}{i}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text("1 0.5 0.5 0.2 0.4\n")
    data = load_detection_set(tmp_path)
    assert data.classes == ["hole"]
    assert Counter(s.split for s in data.samples) == {"train": 3, "validation": 1, "test": 2}
    np.testing.assert_allclose(data.samples[0].boxes, [[40, 15, 60, 35]], atol=1e-4)


def test_mask_components_become_boxes_classed_by_defect_type(tmp_path):
    root = tmp_path / "part"
    for i in range(6):
        _image(root / "train" / "good" / f"{i:03d}.png")
    for defect in ("crack", "hole"):
        for i in range(5):
            _image(root / "test" / defect / f"{i:03d}.png")
            mask = np.zeros((48, 64), np.uint8)
            mask[5:10, 3:9] = 255  # two separate components
            mask[30:40, 40:60] = 255
            p = root / "ground_truth" / defect / f"{i:03d}_mask.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), mask)
    data = load_detection_set(root)
    assert data.classes == ["crack", "hole"]
    defective = [s for s in data.samples if len(s.labels)]
    assert len(defective) == 10
    for s in defective:
        np.testing.assert_allclose(sorted(s.boxes.tolist()), [[3, 5, 9, 10], [40, 30, 60, 40]])
        assert {data.classes[int(c)] for c in s.labels} == {s.image_path.parent.name}
    # not the anomaly split (every defective image in test): defective images are trained on
    assert {s.split for s in defective} >= {"train", "test"}
    assert sum(1 for s in data.samples if not len(s.labels)) == 6  # good images are background images


def test_class_subset_keeps_each_image_in_its_part(tmp_path):
    for i in range(30):
        _voc(tmp_path, f"m{i:02d}", [("a", 2, 2, 20, 20)] + ([("b", 30, 20, 50, 40)] if i % 3 == 0 else []))
        _voc(tmp_path, f"o{i:02d}", [("b", 2, 2, 20, 20)])
    full = load_detection_set(tmp_path)
    sub = load_detection_set(tmp_path, classes=["b"])
    assert sub.classes == ["b"]
    full_split = {s.image_path: s.split for s in full.samples}
    assert all(full_split[s.image_path] == s.split for s in sub.samples)
    # images with only class-a boxes are not background images for a class-b detector: left out, and said so
    assert len(sub.samples) == 30 + 10
    assert any("class 'a' is not among the chosen classes: 30 boxes" in str(i) for i in sub.issues)


# -------------------------------------------------------------------------------------------------- bad input
def test_bad_boxes_and_unlabelled_images_are_per_file_issues(tmp_path):
    for i in range(8):
        _voc(tmp_path, f"ok{i}", [("dent", 5, 5, 20, 20)])
    _voc(tmp_path, "outside", [("dent", 200, 200, 240, 240), ("dent", 5, 5, 20, 20)])  # image is 64 x 48
    _voc(tmp_path, "flat", [("dent", 20, 10, 10, 30)])  # xmax before xmin
    _image(tmp_path / "images" / "nolabel.png")
    data = load_detection_set(tmp_path)
    issues = [str(i) for i in data.issues]
    outside = [i for i in issues if "outside.png" in i]
    assert len(outside) == 1 and "box 1 (class 'dent'" in outside[0] and "zero or negative area" in outside[0]
    assert any("flat.png" in i and "negative area" in i for i in issues)
    assert any("nolabel.png" in i and "no annotation" in i for i in issues)
    names = {s.image_path.stem for s in data.samples}
    assert "outside" in names and "flat" not in names and "nolabel" not in names
    assert len(next(s for s in data.samples if s.image_path.stem == "outside").labels) == 1


def test_unknown_yolo_class_id_is_an_issue_naming_the_file_and_line(tmp_path):
    (tmp_path / "classes.txt").write_text("crack\n")
    for i in range(3):
        _image(tmp_path / "images" / f"{i}.png")
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n" + ("4 0.5 0.5 0.1 0.1\n" if i == 1 else ""))
    data = load_detection_set(tmp_path)
    assert any("1.txt" in str(i) and "line 2" in str(i) and "class id 4" in str(i) for i in data.issues)


def test_a_set_without_any_box_is_a_dataset_error(tmp_path):
    for i in range(3):
        _voc(tmp_path, f"clean{i}", [])
    with pytest.raises(DatasetError, match="no boxes to detect") as exc:
        load_detection_set(tmp_path)
    assert str(tmp_path) in str(exc.value) and exc.value.exit_code == 2


def test_asking_for_a_class_without_boxes_names_the_field(tmp_path):
    for i in range(3):
        _voc(tmp_path, f"x{i}", [("dent", 5, 5, 20, 20)])
    with pytest.raises(DatasetError, match=r"classes: no boxes of class 'scratch' \(classes found: dent\)"):
        load_detection_set(tmp_path, classes=["scratch"])


# ---------------------------------------------------------------------------------------- the published NEU split
def test_committed_neu_det_split_is_the_rule(shared_data):
    root = shared_data / "neu_det"
    if not root.is_dir():
        pytest.skip(f"NEU-DET not present: {root}")
    data = load_detection_set(root)
    for part in ("train", "validation", "test"):
        committed = (SPLIT_DIR / f"neu_det_{part}.txt").read_text().split()
        assert sorted(s.image_path.name for s in data.select(part)) == committed
    assert Counter(s.split for s in data.samples) == {"train": 1260, "validation": 180, "test": 360}
