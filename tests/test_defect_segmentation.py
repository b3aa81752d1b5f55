"""The defect segmentation model (trainers.defectseg, engine.runtime.defect_segmentation): trained on a generated
MVTec-layout set of two defect types, exported, and used through the model-format registry, eval and the CLI.

Real components throughout: the real trunk, training loop, ONNX export and ONNX Runtime, the job registry and the
CLI in-process. Each check can fail: a model that did not learn scores near the trivial IoU, a graph whose pre- or
post-processing differs from training's fails parity, a wrong split trains on held-out images.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.datasets.segmentation import load_segmentation_split
from engine.errors import DatasetError, DefectScopeError, ModelError
from engine.metrics.segmentation import confusion, iou_report
from engine.runtime import defect_segmentation_format as fmt

CLASSES = ["bright_bar", "dark_disc"]
N_PER_TYPE = 7
SHOTS = 4
STEPS = 60


# --------------------------------------------------------------------------------------- generated MVTec-like set
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = cv2.resize(rng.normal(128, 14, (h // 8 + 1, w // 8 + 1)).astype(np.float32), (w, h))
    return base + rng.normal(0, 6, (h, w))


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    """Paint one defect of `kind` (a bright bar or a dark disc) and return its mask."""
    h, w = img.shape
    mask = np.zeros((h, w), np.uint8)
    if kind == "bright_bar":
        length, thick = int(rng.integers(40, 70)), int(rng.integers(6, 10))
        x0, y0 = int(rng.integers(4, w - length - 4)), int(rng.integers(4, h - thick - 4))
        if rng.random() < 0.5:
            mask[y0:y0 + thick, x0:x0 + length] = 1
        else:
            mask[x0:x0 + length, y0:y0 + thick] = 1
        img[mask > 0] = 230
    else:
        r = int(rng.integers(10, 18))
        cx, cy = int(rng.integers(r + 4, w - r - 4)), int(rng.integers(r + 4, h - r - 4))
        cv2.circle(mask, (cx, cy), r, 1, -1)
        img[mask > 0] = 30
    return mask


def _save(path: Path, gray: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, 2))


def write_mvtec(root: Path, seed: int = 0, n_per_type: int = N_PER_TYPE, masks: bool = True) -> Path:
    """train/good (6), test/good (3), test/<type> with ground_truth/<type>/<name>_mask.png (n_per_type each)."""
    rng = np.random.default_rng(seed)
    size = 128
    for split, n in (("train", 6), ("test", 3)):
        for i in range(n):
            _save(root / split / "good" / f"{i:03d}.png", _background(rng, size, size))
    for kind in CLASSES:
        for i in range(n_per_type):
            img = _background(rng, size, size)
            mask = _defect(rng, img, kind)
            _save(root / "test" / kind / f"{i:03d}.png", img)
            if masks:
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask * 255)
    return root


def write_extra(root: Path, types: list[str], seed: int = 3) -> Path:
    """A plain folder of extra samples (what a synthesiser writes): <type>/sN.png + ground_truth/<type>/sN_mask.png."""
    rng = np.random.default_rng(seed)
    for i, kind in enumerate(types):
        img = _background(rng, 96, 96)
        mask = _defect(rng, img, "dark_disc")
        _save(root / kind / f"s{i}.png", img)
        (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "ground_truth" / kind / f"s{i}_mask.png"), mask * 255)
    return root


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec(tmp_path_factory.mktemp("seg") / "tiles")


@pytest.fixture(scope="module")
def trained(tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """One training through the job registry (a few dozen steps at 128 px): its folder, metadata and seconds."""
    import time

    from engine.jobs import run_job

    out = tmp_path_factory.mktemp("run") / "seg"
    extra = write_extra(tmp_path_factory.mktemp("extra") / "synthetic", ["dark_disc", "dark_disc"])
    t0 = time.monotonic()
    result = run_job("train_segmentation", {
        "data": str(tiles), "out": str(out), "extra": [str(extra)], "shots_per_type": SHOTS, "shots_seed": 1,
        "good_images": 3, "steps": STEPS, "image_size": 128, "batch_size": 8, "lr": 3e-3, "device": "cpu",
        "seed": 0})
    return out, result["metadata"], time.monotonic() - t0


# ----------------------------------------------------------------------------------------------------- the split
def test_the_split_draws_k_shots_per_type_from_test_and_holds_out_the_rest(tiles: Path) -> None:
    split = load_segmentation_split(tiles, shots_per_type=2, shots_seed=3, good_images=2)
    assert split.classes == CLASSES
    trained = {s.key for s in split.train}
    per_type = {c: sum(1 for s in split.train if s.label == i + 1) for i, c in enumerate(CLASSES)}
    assert per_type == {c: 2 for c in CLASSES} and sum(1 for s in split.train if s.label == 0) == 2
    assert all(k.startswith(("test/bright_bar/", "test/dark_disc/", "train/good/")) for k in trained)
    held = {s.key for s in split.held_out}
    assert not held & trained
    # every other masked defect and every good test image is held out; no good training image is
    assert len(held) == 2 * (N_PER_TYPE - 2) + 3 and not any(k.startswith("train/") for k in held)
    assert split.draws["bright_bar"] == {"candidates": N_PER_TYPE, "drawn": 2, "from": "all splits"}
    # the same seed draws the same images; draws are nested (the 2-shot set is inside the 3-shot set)
    again = load_segmentation_split(tiles, shots_per_type=2, shots_seed=3, good_images=2)
    assert [s.key for s in again.train] == [s.key for s in split.train]
    three = {s.key for s in load_segmentation_split(tiles, shots_per_type=3, shots_seed=3, good_images=2).train}
    assert trained <= three
    other = {s.key for s in load_segmentation_split(tiles, shots_per_type=2, shots_seed=4, good_images=2).train}
    assert other != trained


def test_bad_data_is_a_clear_error_naming_the_file_or_field(tiles: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as err:
        load_segmentation_split(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    no_masks = write_mvtec(tmp_path / "nomask", n_per_type=2, masks=False)
    with pytest.raises(DatasetError, match="no defective images with masks") as err:
        load_segmentation_split(no_masks)
    assert str(no_masks) in str(err.value)
    with pytest.raises(DatasetError, match=r"classes: 'scratch' not a defect type with masks .*bright_bar"):
        load_segmentation_split(tiles, classes=["scratch"])
    with pytest.raises(DatasetError, match=r"shots_per_type: 7 images of defect type 'bright_bar'.*has 7"):
        load_segmentation_split(tiles, shots_per_type=N_PER_TYPE)


def test_iou_is_summed_over_the_set_and_skips_classes_never_seen() -> None:
    truth = np.array([[0, 1, 1, 255], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 0, 1], [0, 1, 2, 2]])
    r = iou_report(confusion(truth, pred, 4), ["a", "b", "c"])
    assert r["iou_per_class"] == {"a": pytest.approx(1 / 3, abs=1e-5), "b": 1.0, "c": None}
    assert r["miou"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-5) and r["background_iou"] == pytest.approx(2 / 4)


# -------------------------------------------------------------------------------------------- training and export
def test_training_learns_the_defect_types_and_the_export_matches_torch(trained: tuple[Path, dict, float]) -> None:
    out, meta, seconds = trained
    assert (out / fmt.MODEL_FILE).is_file() and (out / fmt.METADATA_FILE).is_file()
    assert meta["classes"] == CLASSES and meta["format"] == fmt.FORMAT
    tr, val, parity = meta["training"], meta["validation"], meta["parity"]
    assert tr["steps"] == STEPS and tr["n_dataset_images"] == 2 * SHOTS + 3 and len(tr["trained_on"]) == 2 * SHOTS + 3
    assert tr["n_extra_images"] == 2 and tr["extra"][0]["per_type"] == {"dark_disc": 2}
    assert tr["n_train_images"] == 2 * SHOTS + 3 + 2  # every image made it into the cache
    # the held-out images: the other defects and the good test images
    assert val["n_defective"] == 2 * (N_PER_TYPE - SHOTS) and val["n_good"] == 3
    # Trivial baselines: "all background" has IoU 0 per class; one class everywhere under 0.1 (defects cover < 5%).
    assert val["miou"] > 0.5, val["iou_per_class"]
    assert min(val["iou_per_class"].values()) > 0.35, val["iou_per_class"]
    assert val["image_auroc"] > 0.9
    assert parity["max_abs_probability_diff"] <= parity["tolerance"] and parity["n_images"] >= 2
    assert parity["n_ambiguous_label_pixels"] < 0.01 * parity["n_pixels"]  # labels were really compared
    assert tr["loss_history"][-1]["total"] < tr["loss_history"][0]["total"]
    print(f"\ntrained {STEPS} steps in {seconds:.1f} s: held-out mIoU {val['miou']:.3f} {val['iou_per_class']}")


def test_the_folder_is_a_scoring_model_of_the_registry(trained: tuple[Path, dict, float], tiles: Path) -> None:
    from engine.datasets.imageio import read_image
    from engine.runtime.defect_segmentation import DefectSegmenter
    from engine.runtime.model_format import is_model_folder, open_model, read_model_info

    out, meta, _ = trained
    info = read_model_info(out)
    assert (info.task, info.kind, info.threshold, info.score_units) == ("segmentation", "defect_segmentation", 0.5,
                                                                      "confidence")
    assert is_model_folder(out) and info.scores_images
    scorer = open_model(out, device="cpu")
    held = [p for p in sorted((tiles / "test" / "dark_disc").glob("*.png"))
            if f"test/dark_disc/{p.name}" not in meta["training"]["trained_on"]]
    image = read_image(held[0])
    score, amap = scorer.score_image(image)
    assert amap.shape == image.shape[:2] and amap.dtype == np.float32 and 0.5 < score <= 1.0
    good_score, _ = scorer.score_image(read_image(tiles / "test" / "good" / "000.png"))
    assert good_score < score
    seg = DefectSegmenter(out, device="cpu").segment(image[:100, :77])  # any size: outputs at the input's size
    assert seg.labels.shape == (100, 77) and seg.labels.dtype == np.uint8 and seg.class_scores.shape == (2,)
    full = DefectSegmenter(out, device="cpu").segment(image)
    assert np.argmax(full.class_scores) == 1 and (full.labels == 2).sum() > 50


def test_the_workbench_offers_it_as_a_scoring_model(trained: tuple[Path, dict, float]) -> None:
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from app.gui.features.models import SCORING_TASKS
    from app.gui.models_panel import describe_metadata
    from engine.runtime.model_format import read_model_info

    out, meta, _ = trained
    assert read_model_info(out).task in SCORING_TASKS
    # an engine job's result carries the metadata alone: the tooltip still names the kind
    assert "model: defect segmentation" in describe_metadata(meta)


def test_eval_reports_miou_on_the_held_out_images_and_infer_writes_heatmaps(
        trained: tuple[Path, dict, float], tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    out, meta, _ = trained
    report = tmp_path / "r.json"
    assert main(["eval", "--model", str(out), "--data", str(tiles), "--report", str(report), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "bright_bar" in printed and "dark_disc" in printed
    r = json.loads(report.read_text())
    # the same images and the same figures as the trainer's validation block
    assert r["n_images"] == meta["validation"]["n_images"]
    assert r["miou"] == pytest.approx(meta["validation"]["miou"], abs=1e-6)
    assert not {p["path"] for p in r["per_image"]} & {str(tiles / k) for k in meta["training"]["trained_on"]}
    assert main(["infer", "--model", str(out), "--out", str(tmp_path / "inf"), "--device", "cpu",
                 str(tiles / "test" / "good")]) == 0
    assert len(list((tmp_path / "inf").glob("*_heatmap.png"))) == 3


def test_cli_train_segmentation_refuses_bad_input_naming_the_field(tiles: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    assert main(["train", "segmentation", "--data", str(tiles), "--out", str(tmp_path / "x"), "--classes",
                 "scratch"]) == 2
    assert "classes: 'scratch'" in capsys.readouterr().err
    assert main(["train", "segmentation", "--data", str(tiles), "--out", str(tmp_path / "x"),
                 "--extra", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert main(["train", "segmentation", "--data", str(tiles), "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_extra_samples_of_an_unknown_type_are_refused(tmp_path: Path) -> None:
    from engine.datasets.segmentation import load_extra_samples

    extra = write_extra(tmp_path / "synthetic", ["scratch"])
    with pytest.raises(DatasetError, match="'scratch' is not one of the classes") as err:
        load_extra_samples([extra], CLASSES)
    assert "s0.png" in str(err.value)
    samples, summary = load_extra_samples([write_extra(tmp_path / "ok", ["dark_disc"])], CLASSES)
    assert [s.label for s in samples] == [2] and summary[0]["per_type"] == {"dark_disc": 1}


def test_training_is_reproducible_by_seed(tiles: Path, tmp_path: Path) -> None:
    from trainers.defectseg.fit import FitConfig, train_segmentation

    split = load_segmentation_split(tiles, shots_per_type=1, good_images=1)
    split.held_out = split.held_out[:1]
    cfg = FitConfig(steps=3, image_size=128, backbone="efficientnet-lite0", batch_size=2, lr=3e-3, device="cpu",
                    seed=5, time_budget_s=None, views=2, log_every=1)
    runs = [train_segmentation(split, tmp_path / name, cfg)["metadata"] for name in ("a", "b")]
    assert runs[0]["training"]["loss_history"] == runs[1]["training"]["loss_history"]
    assert (tmp_path / "a" / fmt.MODEL_FILE).read_bytes() == (tmp_path / "b" / fmt.MODEL_FILE).read_bytes()


def test_a_broken_model_folder_is_an_error_naming_its_file(trained: tuple[Path, dict, float], tmp_path: Path) -> None:
    import shutil

    from engine.runtime.defect_segmentation import DefectSegmenter
    from engine.runtime.model_format import read_model_info

    folder = tmp_path / "m"
    shutil.copytree(trained[0], folder)
    meta = json.loads((folder / fmt.METADATA_FILE).read_text())
    (folder / fmt.METADATA_FILE).write_text(json.dumps({**meta, "classes": []}))
    with pytest.raises(ModelError, match="classes must be a list") as err:
        DefectSegmenter(folder, device="cpu")
    assert fmt.METADATA_FILE in str(err.value)
    (folder / fmt.METADATA_FILE).write_text(json.dumps(meta))
    (folder / fmt.MODEL_FILE).write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load") as err:
        DefectSegmenter(folder, device="cpu")
    assert fmt.MODEL_FILE in str(err.value)
    (folder / fmt.MODEL_FILE).unlink()
    with pytest.raises(ModelError, match=re.escape(f"{fmt.MODEL_FILE} missing")):
        read_model_info(folder)


def test_magnetic_tile_splits_five_shots_per_type(shared_data: Path) -> None:
    """The benchmark's protocol on the real set: 5 drawn from test/<type>, every other defect held out."""
    root = shared_data / "magnetic_tile"
    if not root.is_dir():
        pytest.skip(f"magnetic tile not present: {root}")
    split = load_segmentation_split(root, shots_per_type=5, shots_seed=0, good_images=10)
    assert split.classes == ["blowhole", "break", "crack", "fray", "uneven"]
    assert sum(1 for s in split.train if s.label) == 25 and sum(1 for s in split.train if not s.label) == 10
    n_defects = sum(d["candidates"] for k, d in split.draws.items() if k != "good")
    assert sum(1 for s in split.held_out if s.label) == n_defects - 25
    assert not {s.key for s in split.train} & {s.key for s in split.held_out}


def test_job_errors_reach_the_caller_as_defectscope_errors(tiles: Path, tmp_path: Path) -> None:
    from engine.jobs import run_job

    with pytest.raises(DefectScopeError, match="shots_per_type: Input should be greater than or equal to 1"):
        run_job("train_segmentation", {"data": str(tiles), "out": str(tmp_path / "o"), "shots_per_type": 0})
