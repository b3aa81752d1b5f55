"""Every dataset reader on tiny generated datasets, including the broken files each must survive."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import ImageFile
from pycocotools import mask as mask_utils

from engine.datasets import (
    DEFECTIVE,
    GOOD,
    UNKNOWN,
    Box,
    Dataset,
    Polygon,
    Sample,
    detect_format,
    formats,
    load_dataset,
)
from engine.datasets.visa import VisaReader
from engine.datasets.yolo import parse_yaml_names
from engine.errors import DatasetError


@pytest.fixture(autouse=True)
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading must read headers only: decoding pixels of 10k images would take minutes."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dataset reader decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr("engine.datasets.imageio.cv2.imdecode", refuse)


def img(path: Path, w: int = 8, h: int = 6, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), np.full(shape, 128, np.uint8))
    return path


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image")
    return path


def issue_for(ds: Dataset, path: Path) -> str:
    """The reasons of the issues naming `path` (fails when there is none)."""
    found = [i.reason for i in ds.issues if i.path == path]
    assert found, f"no issue for {path}; issues: {[str(i) for i in ds.issues]}"
    return " | ".join(found)


def by_name(ds: Dataset) -> dict[str, Sample]:
    return {s.image_path.name: s for s in ds.samples}


def test_detection_order() -> None:
    assert list(formats()) == ["mvtec3d", "mvtec", "visa", "coco", "labelme", "voc", "yolo", "folder"]


# ---------------------------------------------------------------- MVTec AD


def make_mvtec(root: Path) -> None:
    a = root / "a"
    img(a / "train/good/000.png")
    img(a / "train/good/001.png")
    broken(a / "train/good/002.png")
    img(a / "test/good/000.png")
    for n in ("000", "001", "002", "003"):
        img(a / "test/scratch" / f"{n}.png")
    img(a / "ground_truth/scratch/000_mask.png", channels=3)  # RGB masks are fine
    img(a / "ground_truth/scratch/001.png")  # same stem as the image
    img(a / "ground_truth/scratch/003_mask.png", w=9)  # wrong size; 002 has no mask at all
    img(root / "b/train/good/x.png")
    img(root / "b/test/dent/y.png")


def test_mvtec_multi_category(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    assert detect_format(tmp_path) == "mvtec"
    ds = load_dataset(tmp_path)
    assert ds.format == "mvtec" and ds.categories == ["a", "b"]
    a = [s for s in ds.samples if s.category == "a"]
    assert Counter((s.split, s.label, s.defect_type) for s in a) == {
        ("train", GOOD, "good"): 2, ("test", GOOD, "good"): 1, ("test", DEFECTIVE, "scratch"): 4,
    }
    masks = {s.image_path.name: s.mask_path for s in a if s.label == DEFECTIVE}
    gt = tmp_path / "a/ground_truth/scratch"
    assert masks == {"000.png": gt / "000_mask.png", "001.png": gt / "001.png", "002.png": None, "003.png": None}
    assert "not a readable image" in issue_for(ds, tmp_path / "a/train/good/002.png")
    assert "no mask" in issue_for(ds, tmp_path / "a/test/scratch/002.png")
    assert "does not match image 003.png" in issue_for(ds, gt / "003_mask.png")
    assert len(ds.issues) == 3
    # b has no ground_truth/ at all: masks are absent, which is not a problem
    b = [s for s in ds.samples if s.category == "b"]
    assert [(s.label, s.defect_type, s.mask_path) for s in b] == [(GOOD, "good", None), (DEFECTIVE, "dent", None)]


def test_mvtec_category_selection(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    ds = load_dataset(tmp_path, category="b")
    assert ds.categories == ["b"] and len(ds.samples) == 2
    single = load_dataset(tmp_path / "a")
    assert single.categories == ["a"] and len(single.samples) == 7
    with pytest.raises(DatasetError, match="'zzz' not found; available: a, b"):
        load_dataset(tmp_path, category="zzz")


def test_mvtec_caps_missing_mask_issues(tmp_path: Path) -> None:
    img(tmp_path / "c/train/good/0.png")
    for i in range(25):
        img(tmp_path / f"c/test/hole/{i:03d}.png")
    (tmp_path / "c/ground_truth/hole").mkdir(parents=True)
    ds = load_dataset(tmp_path)
    assert len(ds.samples) == 26 and len(ds.issues) == 21
    assert "5 more files (25 in all)" in ds.issues[-1].reason


def test_unusable_roots_raise_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no known dataset layout"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "cat/train/good").mkdir(parents=True)
    (tmp_path / "cat/test/good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no usable images"):
        load_dataset(tmp_path / "cat")
    broken(tmp_path / "flat/a.png")
    with pytest.raises(DatasetError, match=r"no usable images.*a\.png"):
        load_dataset(tmp_path / "flat")


# ---------------------------------------------------------------- MVTec 3D-AD


def xyz(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros((6, 8, 3), np.float32), photometric="rgb")


def test_mvtec3d(tmp_path: Path) -> None:
    c = tmp_path / "bagel"
    for split in ("train", "validation"):
        img(c / split / "good/rgb/000.png", channels=3)
        xyz(c / split / "good/xyz/000.tiff")
    broken(c / "train/good/rgb/001.png")
    xyz(c / "train/good/xyz/001.tiff")
    img(c / "test/good/rgb/000.png", channels=3)
    xyz(c / "test/good/xyz/000.tiff")
    img(c / "test/good/gt/000.png")
    for n in ("000", "001", "002"):
        img(c / "test/hole/rgb" / f"{n}.png", channels=3)
    xyz(c / "test/hole/xyz/000.tiff")
    xyz(c / "test/hole/xyz/002.tiff")
    img(c / "test/hole/gt/000.png")
    img(c / "test/hole/gt/001.png")
    img(c / "test/hole/gt/002.png", h=7)
    assert detect_format(tmp_path) == "mvtec3d" and detect_format(c) == "mvtec3d"
    ds = load_dataset(tmp_path)
    assert ds.categories == ["bagel"]
    assert Counter((s.split, s.label) for s in ds.samples) == {
        ("train", GOOD): 1, ("validation", GOOD): 1, ("test", GOOD): 1, ("test", DEFECTIVE): 3,
    }
    hole = {s.image_path.name: s for s in ds.samples if s.defect_type == "hole"}
    assert hole["000.png"].extra["xyz_path"] == c / "test/hole/xyz/000.tiff"
    assert hole["000.png"].mask_path == c / "test/hole/gt/000.png"
    assert hole["001.png"].extra["xyz_path"] is None
    assert "xyz" in issue_for(ds, c / "test/hole/rgb/001.png")
    assert hole["002.png"].mask_path is None
    assert "does not match" in issue_for(ds, c / "test/hole/gt/002.png")
    assert "not a readable image" in issue_for(ds, c / "train/good/rgb/001.png")
    assert len(ds.issues) == 3


# ---------------------------------------------------------------- VisA


def write_csv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("object,split,label,image,mask\n" + "\n".join(rows) + "\n")
    return path


def test_visa(tmp_path: Path) -> None:
    img(tmp_path / "candle/Data/Images/Normal/0000.JPG", channels=3)
    img(tmp_path / "candle/Data/Images/Normal/0001.JPG", channels=3)
    img(tmp_path / "candle/Data/Images/Anomaly/000.JPG", channels=3)
    img(tmp_path / "candle/Data/Masks/Anomaly/000.png")
    img(tmp_path / "candle/Data/Images/Anomaly/001.JPG", channels=3)
    img(tmp_path / "candle/Data/Masks/Anomaly/001.png", w=4)
    img(tmp_path / "pcb1/Data/Images/Normal/0000.JPG", channels=3)
    broken(tmp_path / "pcb1/Data/Images/Normal/0001.JPG")
    rows = [
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png",
        "candle,test,weird,candle/Data/Images/Normal/0000.JPG,",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0001.JPG,",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0002.JPG,",
    ]
    csv_path = write_csv(tmp_path / "split_csv/1cls.csv", rows)
    assert detect_format(tmp_path) == "visa" and detect_format(csv_path) == "visa"
    for root in (tmp_path, csv_path):
        ds = load_dataset(root)
        assert ds.categories == ["candle", "pcb1"]
        assert Counter((s.category, s.split, s.label) for s in ds.samples) == {
            ("candle", "train", GOOD): 1, ("candle", "test", GOOD): 1, ("candle", "test", DEFECTIVE): 2,
            ("pcb1", "train", GOOD): 1,
        }
        anomalies = {s.image_path.name: s for s in ds.select(label=DEFECTIVE)}
        assert anomalies["000.JPG"].mask_path == tmp_path / "candle/Data/Masks/Anomaly/000.png"
        assert anomalies["001.JPG"].mask_path is None
        assert "does not match" in issue_for(ds, tmp_path / "candle/Data/Masks/Anomaly/001.png")
        assert "line 6: unknown label 'weird'" in issue_for(ds, csv_path)
        assert "not a readable image" in issue_for(ds, tmp_path / "pcb1/Data/Images/Normal/0001.JPG")
        assert "not found" in issue_for(ds, tmp_path / "pcb1/Data/Images/Normal/0002.JPG")
        assert len(ds.issues) == 4
    assert len(load_dataset(tmp_path, category="pcb1").samples) == 1
    with pytest.raises(DatasetError, match="available: candle, pcb1"):
        load_dataset(tmp_path, category="cashew")


def test_visa_missing_images_are_capped_and_check_files_off(tmp_path: Path) -> None:
    img(tmp_path / "fryum/Data/Images/Normal/0.JPG", channels=3)
    rows = ["fryum,train,normal,fryum/Data/Images/Normal/0.JPG,"]
    rows += [f"fryum,test,anomaly,fryum/Data/Images/Anomaly/{i}.JPG,fryum/Data/Masks/Anomaly/{i}.png"
             for i in range(30)]
    csv_path = write_csv(tmp_path / "split_csv/1cls.csv", rows)
    ds = load_dataset(tmp_path)
    assert len(ds.samples) == 1
    assert len(ds.issues) == 21
    assert ds.issues[-1].path == csv_path and "10 more files (30 in all)" in ds.issues[-1].reason
    unchecked = VisaReader(check_files=False).load(tmp_path)
    assert len(unchecked.samples) == 31 and unchecked.issues == []


# ---------------------------------------------------------------- plain folders


def test_folder_labelled_by_folder_name_with_masks(tmp_path: Path) -> None:
    img(tmp_path / "good/a.png")
    img(tmp_path / "good/b.png")
    img(tmp_path / "scratch/c.png")
    img(tmp_path / "scratch/d.png")
    img(tmp_path / "dent/e.png")
    broken(tmp_path / "dent/f.png")
    img(tmp_path / "masks/c.png")
    img(tmp_path / "masks/d.png", w=5)
    img(tmp_path / "ground_truth/dent/e_mask.png")
    (tmp_path / "notes").mkdir()  # a folder without images adds nothing
    (tmp_path / "notes/readme.txt").write_text("x")
    assert detect_format(tmp_path) == "folder"
    ds = load_dataset(tmp_path)
    s = by_name(ds)
    assert sorted(s) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert [(s[n].label, s[n].defect_type, s[n].split) for n in ("a.png", "c.png", "e.png")] == [
        (GOOD, "good", "unspecified"), (DEFECTIVE, "scratch", "unspecified"), (DEFECTIVE, "dent", "unspecified"),
    ]
    assert s["c.png"].mask_path == tmp_path / "masks/c.png"
    assert s["e.png"].mask_path == tmp_path / "ground_truth/dent/e_mask.png"
    assert s["d.png"].mask_path is None
    assert "does not match" in issue_for(ds, tmp_path / "masks/d.png")
    assert "not a readable image" in issue_for(ds, tmp_path / "dent/f.png")
    assert len(ds.issues) == 2


def test_folder_with_splits_and_flat(tmp_path: Path) -> None:
    img(tmp_path / "train/good/a.png")
    img(tmp_path / "val/good/b.png")
    img(tmp_path / "val/crack/c.png")
    img(tmp_path / "loose.png")
    ds = load_dataset(tmp_path)
    assert ds.format == "folder"
    assert sorted((s.image_path.name, s.split, s.label, s.defect_type) for s in ds.samples) == [
        ("a.png", "train", GOOD, "good"), ("b.png", "validation", GOOD, "good"),
        ("c.png", "validation", DEFECTIVE, "crack"), ("loose.png", "unspecified", UNKNOWN, None),
    ]
    flat = tmp_path / "flat"
    for n in range(3):
        img(flat / f"{n}.jpg", channels=3)
    ds = load_dataset(flat)
    assert [(s.label, s.split) for s in ds.samples] == [(UNKNOWN, "unspecified")] * 3
    with pytest.raises(DatasetError, match="no categories"):
        load_dataset(flat, category="x")


def test_folder_of_thousands_loads_fast_without_decoding(tmp_path: Path) -> None:
    data = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    for sub, n in (("good", 2000), ("scratch", 1000)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            (tmp_path / sub / f"{i:05d}.png").write_bytes(data)
    t0 = time.perf_counter()
    ds = load_dataset(tmp_path)
    assert time.perf_counter() - t0 < 5.0
    assert len(ds.samples) == 3000 and ds.issues == []


# ---------------------------------------------------------------- COCO


def coco_json(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cats = [{"id": 2, "name": "dent"}, {"id": 1, "name": "scratch"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def test_coco(tmp_path: Path) -> None:
    for n in ("a", "b", "c", "d"):
        img(tmp_path / "images" / f"{n}.png", w=20, h=10)
    broken(tmp_path / "images/bad.png")
    rle_mask = np.zeros((10, 20), np.uint8, order="F")
    rle_mask[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    images = [{"id": i, "file_name": f"{n}.png", "width": 20, "height": 10}
              for i, n in enumerate(["a", "b", "c", "d", "ghost", "bad"], start=1)]
    images[3]["width"] = 40
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 4, 4],
         "segmentation": [[1, 2, 5, 2, 5, 6, 1, 6]]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 1, 2, 2], "segmentation": []},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [3, 2, 6, 4], "segmentation": rle, "iscrowd": 1},
        {"id": 4, "image_id": 4, "category_id": 1, "bbox": ["x"]},
        {"id": 5, "image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]},
    ]
    js = coco_json(tmp_path / "annotations/instances_train.json", images, anns)
    (tmp_path / "annotations/broken.json").write_text("{not json")
    assert detect_format(tmp_path) == "coco" and detect_format(js) == "coco"
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["scratch", "dent"]
    s = by_name(ds)
    assert sorted(s) == ["a.png", "b.png", "c.png", "d.png"]
    assert all(x.split == "train" for x in ds.samples)
    a = s["a.png"]
    assert (a.label, a.defect_type, a.class_names) == (DEFECTIVE, "scratch", ["scratch", "dent"])
    assert a.boxes == [Box(1, 2, 5, 6, "scratch"), Box(10, 1, 12, 3, "dent")]
    assert a.polygons == [Polygon(((1, 2), (5, 2), (5, 6), (1, 6)), "scratch")]
    b = s["b.png"]
    assert b.label == DEFECTIVE and b.defect_type == "dent"
    assert len(b.polygons) == 1 and b.polygons[0].class_name == "dent"
    xs = [p[0] for p in b.polygons[0].points]
    ys = [p[1] for p in b.polygons[0].points]
    assert (min(xs), min(ys), max(xs), max(ys)) == (3, 2, 8, 5)  # contour runs on the outer pixels
    assert (s["c.png"].label, s["c.png"].defect_type) == (GOOD, "good")
    assert s["d.png"].label == UNKNOWN  # its only annotation is malformed
    reasons = issue_for(ds, js)
    assert "annotation id 4: malformed" in reasons
    assert "declares size 40x10" in reasons
    assert "1 unknown image ids" in reasons
    assert "not found" in issue_for(ds, tmp_path / "images/ghost.png")
    assert "not a readable image" in issue_for(ds, tmp_path / "images/bad.png")
    assert "not valid JSON" in issue_for(ds, tmp_path / "annotations/broken.json")
    assert len(ds.issues) == 6
    # the JSON file itself as root
    assert len(load_dataset(js).samples) == 4


# ---------------------------------------------------------------- YOLO


def test_yolo(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: scratch\n  1: dent\n")
    img(tmp_path / "images/train/a.png", w=100, h=50)
    img(tmp_path / "images/train/b.png", w=100, h=50)
    img(tmp_path / "images/train/c.png", w=100, h=50)
    img(tmp_path / "images/val/d.png", w=100, h=50)
    broken(tmp_path / "images/val/bad.png")
    labels = tmp_path / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir()
    (labels / "train/a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3\n")
    (labels / "train/b.txt").write_text("")
    (labels / "train/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (labels / "val/d.txt").write_text("0 0.5 oops 0.1 0.1\n7 0.5 0.5 0.1 0.1\n0 0.1 0.2 0.3\n")
    (labels / "val/bad.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert detect_format(tmp_path) == "yolo"
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["scratch", "dent"]
    s = by_name(ds)
    assert sorted(s) == ["a.png", "b.png", "c.png", "d.png"]
    a = s["a.png"]
    assert (a.split, a.label, a.defect_type, a.class_names) == ("train", DEFECTIVE, "scratch", ["scratch", "dent"])
    assert a.boxes == [Box(40, 15, 60, 35, "scratch"), Box(10, 5, 30, 15, "dent")]
    assert a.polygons == [Polygon(((10, 5), (30, 5), (30, 15)), "dent")]
    assert (s["b.png"].label, s["c.png"].label, s["d.png"].label) == (GOOD, UNKNOWN, UNKNOWN)
    assert s["d.png"].split == "validation"
    reasons = issue_for(ds, labels / "val/d.txt")
    assert "line 1:" in reasons and "line 2: class id 7 out of range" in reasons and "line 3:" in reasons
    assert "no matching image" in issue_for(ds, labels / "train/orphan.txt")
    assert "not a readable image" in issue_for(ds, tmp_path / "images/val/bad.png")
    assert len(ds.issues) == 5


def test_yolo_classes_txt_and_flat_layout(tmp_path: Path) -> None:
    img(tmp_path / "images/a.png", w=10, h=10)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels/a.txt").write_text("1 0.5 0.5 1 1\n")
    (tmp_path / "classes.txt").write_text("hole\nstain\n")
    ds = load_dataset(tmp_path)
    assert ds.format == "yolo" and ds.class_names == ["hole", "stain"]
    assert ds.samples[0].boxes == [Box(0, 0, 10, 10, "stain")] and ds.samples[0].split == "unspecified"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("names: [scratch, 'dent', \"hole\"]\nnc: 3\n", ["scratch", "dent", "hole"]),
        ("names:\n  - scratch\n  - dent  # comment\nnc: 2\n", ["scratch", "dent"]),
        ("names:\n  1: dent\n  0: scratch\n", ["scratch", "dent"]),
        ("names: {0: scratch, 1: dent}\n", ["scratch", "dent"]),
        ("nc: 2\n", None),
    ],
)
def test_yolo_yaml_names(text: str, names: list[str] | None) -> None:
    assert parse_yaml_names(text) == names


# ---------------------------------------------------------------- Pascal VOC


def voc_xml(path: Path, filename: str, objects: list[tuple[str, int, int, int, int]], prolog: str = "") -> Path:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{prolog}<annotation><filename>{filename}</filename>"
                    f"<size><width>20</width><height>10</height></size>{objs}</annotation>")
    return path


def test_voc(tmp_path: Path) -> None:
    jpeg = tmp_path / "JPEGImages"
    for n in ("a", "b", "c", "e", "m"):
        img(jpeg / f"{n}.jpg", w=20, h=10, channels=3)
    broken(jpeg / "bad.jpg")
    ann = tmp_path / "Annotations"
    voc_xml(ann / "a.xml", "a.jpg", [("pit", 2, 3, 10, 8), ("scar", 1, 1, 30, 10)])
    voc_xml(ann / "b.xml", "b.jpg", [])
    evil = voc_xml(ann / "e.xml", "e.jpg", [("pit", 1, 1, 2, 2)],
                   prolog='<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]>')
    (ann / "m.xml").write_text("<annotation><filename>m.jpg</filename><object>")
    ghost = voc_xml(ann / "ghost.xml", "ghost.jpg", [("pit", 1, 1, 2, 2)])
    voc_xml(ann / "bad.xml", "bad.jpg", [])
    (tmp_path / "ImageSets/Main").mkdir(parents=True)
    (tmp_path / "ImageSets/Main/train.txt").write_text("a\nb\n")
    assert detect_format(tmp_path) == "voc"
    ds = load_dataset(tmp_path)
    s = by_name(ds)
    assert sorted(s) == ["a.jpg", "b.jpg", "c.jpg", "e.jpg", "m.jpg"]
    a = s["a.jpg"]
    assert (a.label, a.defect_type, a.split) == (DEFECTIVE, "pit", "train")
    assert a.boxes == [Box(1, 2, 10, 8, "pit"), Box(0, 0, 20, 10, "scar")]  # 1-based inclusive, clamped
    assert (s["b.jpg"].label, s["b.jpg"].split) == (GOOD, "train")
    assert [s[n].label for n in ("c.jpg", "e.jpg", "m.jpg")] == [UNKNOWN] * 3
    assert ds.class_names == ["pit", "scar"]
    assert "DOCTYPE" in issue_for(ds, evil)
    assert "unreadable XML" in issue_for(ds, ann / "m.xml")
    assert "'ghost.jpg' not found" in issue_for(ds, ghost)
    assert "not a readable image" in issue_for(ds, jpeg / "bad.jpg")
    assert len(ds.issues) == 4


def test_voc_lowercase_layout(tmp_path: Path) -> None:
    img(tmp_path / "images/x.jpg", w=20, h=10, channels=3)
    voc_xml(tmp_path / "annotations/x.xml", "x.jpg", [("pit", 1, 1, 5, 5)])
    ds = load_dataset(tmp_path)
    assert ds.format == "voc" and ds.samples[0].boxes == [Box(0, 0, 5, 5, "pit")]


# ---------------------------------------------------------------- labelme


def labelme_json(path: Path, image_path: str, shapes: list[dict], **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.4.1", "shapes": shapes, "imagePath": image_path,
                                "imageData": None, "imageWidth": 20, "imageHeight": 10, **extra}))
    return path


def test_labelme(tmp_path: Path) -> None:
    for n in ("a", "b", "c", "f", "u"):
        img(tmp_path / f"{n}.png", w=20, h=10)
    broken(tmp_path / "bad.png")
    a = labelme_json(tmp_path / "a.json", "a.png", [
        {"label": "scratch", "points": [[1, 1], [5, 1], [5, 4]], "shape_type": "polygon"},
        {"label": "dent", "points": [[8, 2], [12, 6]], "shape_type": "rectangle"},
        {"label": "pit", "points": [[15, 5], [17, 5]], "shape_type": "circle"},
        {"label": "blob", "points": [[1, 1]], "shape_type": "mask"},
    ])
    labelme_json(tmp_path / "b.json", "b.png", [])
    labelme_json(tmp_path / "ann/f.json", "..\\f.png", [{"label": "dent", "points": [[0, 0], [2, 2]],
                                                          "shape_type": "rectangle"}])
    gone = labelme_json(tmp_path / "gone.json", "gone.png", [], imageData="aGVsbG8=")
    labelme_json(tmp_path / "bad.json", "bad.png", [])
    (tmp_path / "u.json").write_text('{"shapes": [')
    assert detect_format(tmp_path) == "labelme"
    ds = load_dataset(tmp_path)
    s = by_name(ds)
    assert sorted(s) == ["a.png", "b.png", "c.png", "f.png", "u.png"]
    sa = s["a.png"]
    assert (sa.label, sa.defect_type, sa.class_names) == (DEFECTIVE, "scratch", ["scratch", "dent", "pit"])
    assert sa.boxes[:2] == [Box(1, 1, 5, 4, "scratch"), Box(8, 2, 12, 6, "dent")]
    assert sa.polygons[0] == Polygon(((1, 1), (5, 1), (5, 4)), "scratch")
    assert len(sa.polygons[1].points) == 32
    assert sa.boxes[2] == Box(13, 3, 17, 7, "pit")
    assert (s["b.png"].label, s["c.png"].label, s["f.png"].label, s["u.png"].label) == (
        GOOD, UNKNOWN, DEFECTIVE, UNKNOWN)
    assert ds.class_names == ["dent", "pit", "scratch"]
    assert "shape 4: shape_type 'mask' not supported" in issue_for(ds, a)
    assert "embedded imageData" in issue_for(ds, gone)
    assert "not valid JSON" in issue_for(ds, tmp_path / "u.json")
    assert "not a readable image" in issue_for(ds, tmp_path / "bad.png")
    assert len(ds.issues) == 4
