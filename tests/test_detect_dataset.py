"""The detect_dataset job (engine.detection_dataset): a detector over every image of a dataset, through a real engine
process on loopback, read back with engine.detections.read_detections. The detectors are real ONNX graphs the test
builds (tests/detector_graphs.py): a DefectScope detector of bright blobs and a YOLO-style one brought from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.client import EngineClient
from engine.datasets import load_dataset
from engine.datasets.keys import sample_key
from engine.detection_dataset import detect_dataset
from engine.detections import read_detections
from engine.errors import DefectScopeError
from engine.metrics.detection_match import match_image
from tests.detector_graphs import write_blob_detector, write_yolo_detector
from tests.test_engine import TOKEN, EngineProcess

SPLITS = {"train", "validation", "test"}


def _picture(path: Path, squares: list[tuple[int, int, int]], h: int = 128, w: int = 160) -> np.ndarray:
    """A dark image with bright squares (x, y, side); returns their mask."""
    img = np.full((h, w, 3), 30, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    for x, y, s in squares:
        img[y:y + s, x:x + s] = 240
        mask[y:y + s, x:x + s] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return mask


def write_mvtec(root: Path) -> Path:
    """MVTec layout, category "part": clean train and test images, "spot" defects with masks, two broken files."""
    cat = root / "part"
    for i in range(4):
        _picture(cat / "train" / "good" / f"{i:03d}.png", [])
    for i in range(2):
        _picture(cat / "test" / "good" / f"{i:03d}.png", [])
    for i in range(3):
        mask = _picture(cat / "test" / "spot" / f"{i:03d}.png", [(20 + 30 * i, 40, 24)])
        (cat / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cat / "ground_truth" / "spot" / f"{i:03d}_mask.png"), mask)
    (cat / "test" / "good" / "broken.png").write_bytes(b"not a png at all")  # the loader refuses it
    _picture(cat / "test" / "good" / "truncated.png", [])
    whole = (cat / "test" / "good" / "truncated.png").read_bytes()
    (cat / "test" / "good" / "truncated.png").write_bytes(whole[:120])  # a header the loader takes, no pixels
    return root


def write_voc(root: Path) -> Path:
    """VOC with its own split lists; `loose` has no annotation (no truth), `clean` is annotated without objects."""
    specs = {"t0": [(10, 10, 24)], "t1": [(60, 20, 30)], "t2": [(100, 70, 20)], "v0": [(30, 30, 24)],
             "e0": [(40, 50, 28)], "e1": [(90, 10, 24), (20, 80, 24)], "clean": [], "loose": [(50, 50, 24)]}
    (root / "annotations").mkdir(parents=True)
    for name, squares in specs.items():
        _picture(root / "images" / f"{name}.png", squares)
        if name == "loose":
            continue
        objs = "".join(f"<object><name>dent</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                       f"<xmax>{x + s}</xmax><ymax>{y + s}</ymax></bndbox></object>" for x, y, s in squares)
        (root / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>160</width><height>128</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("t0\nt1\nt2\nclean\n")
    (lists / "val.txt").write_text("v0\n")
    (lists / "test.txt").write_text("e0\ne1\n")
    return root


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("engine")
    token_file = base / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(base / "engine", token_file).start()
    client = EngineClient(eng.url, TOKEN)
    try:
        yield client
    finally:
        client.close()
        eng.stop()


def _run(client: EngineClient, params: dict, dest: Path):
    job_id = client.submit("detect_dataset", params)
    job = client.wait(job_id, timeout=180, poll=0.3)
    assert job.succeeded, job
    client.download(job_id, dest)
    return job, read_detections(dest / "detections")


def _hits(item) -> int:
    return match_image(item.truth.boxes, item.truth.classes, item.boxes, item.scores, item.classes, 0.5).n_hits


def test_detect_dataset_job_on_an_mvtec_set_with_masks(engine, tmp_path):
    root = write_mvtec(tmp_path / "mvtec")
    det = write_blob_detector(tmp_path / "det", input_size=256, class_names=["spot"])
    job, found = _run(engine, {"model": str(det), "data": str(root), "category": "part"}, tmp_path / "got")
    assert job.result["n_images"] == 9 and job.result["n_errors"] == 2

    ds = load_dataset(root, category="part")
    every = {sample_key(root, s) for s in ds.samples} | {sample_key(root, i.path) for i in ds.issues}
    assert set(found.items) | set(found.errors) == every and len(every) == 11
    assert sorted(found.errors) == ["part/test/good/broken.png", "part/test/good/truncated.png"]
    for key, error in found.errors.items():
        assert Path(key).name in error, error
    assert found.is_for(root, "part") and found.classes == ["spot"] and found.threshold == 0.5 and found.provider

    for key, item in found.items.items():
        assert item.truth is not None and item.split in SPLITS, key  # MVTec labels every image
        if "/spot/" in key:
            # the mask's one component is the labelled box, and the blob detector finds it
            i = int(Path(key).stem)
            assert item.truth.classes == ["spot"]
            np.testing.assert_allclose(item.truth.boxes, [[20 + 30 * i, 40, 44 + 30 * i, 64]])
            assert _hits(item) == 1, key
        else:
            assert len(item.truth.boxes) == 0 and len(item.boxes) == 0, key  # labelled clean, nothing found
    assert {it.split for it in found.items.values()} <= SPLITS


def test_detect_dataset_job_with_a_detector_brought_from_elsewhere_on_voc(engine, tmp_path):
    root = write_voc(tmp_path / "voc")
    det = write_yolo_detector(tmp_path / "yolo", size=320, class_probs=(0.1, 0.9), class_names=["scratch", "dent"])
    _job, found = _run(engine, {"model": str(det), "data": str(root)}, tmp_path / "got")
    assert set(found.items) == {f"images/{n}.png" for n in ("t0", "t1", "t2", "v0", "e0", "e1", "clean", "loose")}
    assert not found.errors and found.category is None and found.classes == ["scratch", "dent"]
    splits = {k.removeprefix("images/").removesuffix(".png"): it.split for k, it in found.items.items()}
    assert splits == {"t0": "train", "t1": "train", "t2": "train", "clean": "train", "v0": "validation",
                      "e0": "test", "e1": "test", "loose": None}  # the format's own split lists
    loose = found.items["images/loose.png"]
    assert loose.truth is None and len(loose.boxes) >= 1  # searched, though nothing labels it
    clean = found.items["images/clean.png"]
    assert clean.truth is not None and len(clean.truth.boxes) == 0 and len(clean.boxes) == 0
    e1 = found.items["images/e1.png"]
    assert e1.truth.classes == ["dent", "dent"] and set(e1.classes) == {"dent"}
    centres = (e1.boxes[:, :2] + e1.boxes[:, 2:]) / 2
    for x0, y0, x1, y1 in e1.truth.boxes:  # the cell detector's small boxes lie on each labelled square
        assert ((centres >= [x0, y0]) & (centres <= [x1, y1])).all(axis=1).any()
    assert any("no annotation" in n and "loose.png" in n for n in found.notes), found.notes


def test_a_folder_without_labels_is_searched_with_no_truth(tmp_path):
    for i in range(3):
        _picture(tmp_path / "loose" / f"{i}.png", [(10 + 20 * i, 30, 24)])
    det = write_blob_detector(tmp_path / "det", class_names=["spot"])
    path = detect_dataset(det, tmp_path / "loose", tmp_path / "out")
    found = read_detections(path.parent)
    assert sorted(found.items) == ["0.png", "1.png", "2.png"]
    assert all(it.truth is None and it.split is None and len(it.boxes) >= 1 for it in found.items.values())
    assert any("no labelled boxes" in n for n in found.notes), found.notes


def test_a_folder_that_is_not_a_detector_is_one_clear_error(tmp_path):
    _picture(tmp_path / "data" / "a.png", [])
    (tmp_path / "nomodel").mkdir()
    with pytest.raises(DefectScopeError, match="nomodel"):
        detect_dataset(tmp_path / "nomodel", tmp_path / "data", tmp_path / "out")
