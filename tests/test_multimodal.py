"""The RGB + 3D model: training job on a generated MVTec 3D-AD set, scoring with one sensor missing (the missing
modality's files are never opened), the five report modes, and clear errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open3d", reason="the '3d' extra (open3d) is not installed")

from engine.datasets import load_dataset
from engine.datasets.demo3d import generate_demo3d
from engine.errors import DefectScopeError
from engine.jobs import run_job
from engine.multimodal_eval import evaluate_multimodal
from engine.runtime import multimodal as mm

_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only appends file names to a list


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo3d(tmp_path_factory.mktemp("d3") / "demo3d", categories=("dome",), size=128, n_train=10,
                           n_validation=3, n_test_good=4, n_test_defect=3)


@pytest.fixture(scope="module")
def model_dir(demo3d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mm") / "dome"
    events: list[tuple[float, str]] = []
    run_job("train_multimodal", {"data": str(demo3d), "category": "dome", "out": str(out), "image_size": 128,
                                 "geo_grid": 64, "distill_epochs": 15}, lambda f, m: events.append((f, m)))
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    return out


def test_training_writes_a_complete_model(model_dir: Path) -> None:
    for name in (mm.RGB_FEATURES_FILE, mm.RGB_TO_GEO_FILE, mm.GEO_TO_RGB_FILE, mm.BANKS_FILE, mm.METADATA_FILE):
        assert (model_dir / name).is_file(), name
    meta = json.loads((model_dir / mm.METADATA_FILE).read_text())
    assert set(meta["normalisation"]) == {"rgb>rgb", "geo>geo", "rgb_pred>rgb", "geo_pred>geo", "rgb_pred>rgb_pred",
                                          "geo_pred>geo_pred"}
    assert meta["training"]["n_train"] == 10 and meta["training"]["n_validation"] == 3
    # xyz clouds keep FPFH; the fusion weights come from the 3 validation parts and are what the model fuses with
    assert meta["geo_features"] == "fpfh" and "depth" not in meta
    assert meta["fusion"]["rule"] == "held-out good parts" and meta["fusion"]["n_parts"] == 3
    assert mm.MultimodalModel(model_dir).weights == meta["fusion"]["weights"]
    assert all(v > 0 for v in meta["training"]["bank_sizes"].values())
    # the preprocessed clouds are cached beside the run, not in the dataset
    assert list((model_dir / "cache" / "clouds").glob("*.npz"))


def test_stand_in_maps_are_normalised_per_pixel_by_good_parts(model_dir: Path, demo3d: Path, tmp_path: Path) -> None:
    """The translator's place-bound error is taken out: on good parts it was not fitted on, the per-pixel
    normalised stand-in maps have no systematic pattern left (their mean stays near 0 everywhere)."""
    model = mm.MultimodalModel(model_dir)
    assert set(model.pixel_norm) == {"geo_pred", "rgb_pred"}
    for mu, sd in model.pixel_norm.values():
        assert mu.shape == sd.shape == (128, 128) and (sd > 0).all()
    good = sorted((demo3d / "dome" / "test" / "good" / "rgb").glob("*.png"))
    maps = {"geo_pred": [], "rgb_pred": []}
    for rgb in good:
        rows, _ = model.rows(rgb, rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff", set(mm.SOURCES), tmp_path)
        for src in maps:
            maps[src].append(model.pixel_normalised(model.raw_map(rows[src], src), src))
    for src, ms in maps.items():
        mean = np.mean(ms, 0)
        assert np.quantile(np.abs(mean), 0.95) < 2.0, src
    model.stand_in_bank = "predicted"  # a bank of stand-ins already shares their error: left as it is
    raw = model.raw_map(rows["geo_pred"], "geo_pred")
    assert np.array_equal(model.pixel_normalised(raw, "geo_pred"), raw)


def test_one_sensor_missing_never_opens_its_files(model_dir: Path, demo3d: Path, tmp_path: Path) -> None:
    part = demo3d / "dome" / "test" / "dent"
    rgb, xyz = part / "rgb" / "000.png", part / "xyz" / "000.tiff"
    model = mm.MultimodalModel(model_dir)
    _OPENED.clear()
    pred = model.predict(rgb_path=rgb)
    assert pred.opened == [str(rgb)] and not any(p.endswith(".tiff") for p in _OPENED)
    assert set(pred.maps) == {"rgb", "geo_pred"} and pred.anomaly_map.shape == (128, 128)
    _OPENED.clear()
    pred = model.predict(xyz_path=xyz, cache_dir=tmp_path / "cache")
    assert pred.opened == [str(xyz)] and not any(p.endswith(".png") for p in _OPENED)
    assert set(pred.maps) == {"rgb_pred", "geo"}
    # a part whose scanner file is gone entirely still scores from its image
    lone = tmp_path / "lone.png"
    shutil.copy(rgb, lone)
    assert np.isfinite(model.predict(rgb_path=lone).score)
    with pytest.raises(DefectScopeError, match="needs the point cloud"):
        model.predict(rgb_path=lone, mode="both")
    with pytest.raises(DefectScopeError, match="RGB image, a point cloud, or both"):
        model.predict()
    with pytest.raises(DefectScopeError, match="unknown mode"):
        model.predict(rgb_path=lone, mode="telepathy")


def test_every_report_mode_is_measured(model_dir: Path, demo3d: Path, tmp_path: Path) -> None:
    result = evaluate_multimodal(model_dir, demo3d, "dome", cache_dir=tmp_path / "cache")
    assert set(result["modes"]) == set(mm.MODES)
    ds = load_dataset(demo3d / "dome")
    assert result["n_test"] == sum(1 for s in ds.samples if s.split == "test")
    for mode, m in result["modes"].items():
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert 0.0 <= m[key] <= 1.0, (mode, key)
    both = result["modes"]["both"]
    # the geometric defects are what 3D adds; colour defects are what RGB adds (a small set: loose floors)
    assert result["modes"]["geo_only"]["image_auroc_per_type"]["dent"] >= 0.8
    assert result["modes"]["rgb_only"]["image_auroc_per_type"]["stain"] >= 0.8
    assert both["image_auroc"] >= 0.75 and both["pixel_auroc"] >= 0.8


def test_wrong_layout_is_a_clear_error(demo_data: Path, tmp_path: Path) -> None:
    from engine.errors import DatasetError

    with pytest.raises(DatasetError, match="MVTec 3D-AD layout"):
        run_job("train_multimodal", {"data": str(demo_data), "category": "washer", "out": str(tmp_path / "o")})


def test_retraining_into_the_same_folder_gives_the_same_model(model_dir: Path, demo3d: Path, tmp_path: Path) -> None:
    """A second run into an existing model folder must not pick up the first run's statistics."""
    before = np.load(model_dir / mm.BANKS_FILE)["rgb_std"].copy()
    run_job("train_multimodal", {"data": str(demo3d), "category": "dome", "out": str(model_dir), "image_size": 128,
                                 "geo_grid": 64, "distill_epochs": 15})
    after = np.load(model_dir / mm.BANKS_FILE)["rgb_std"]
    assert np.allclose(before, after, rtol=1e-4)


def test_score_dataset_job_scores_rgb_and_3d_parts_for_the_workbench(model_dir: Path, demo3d: Path,
                                                                     tmp_path: Path) -> None:
    """The engine's score_dataset job recognises the RGB + 3D model and writes what the workbench browses."""
    out = tmp_path / "pred"
    result = run_job("score_dataset", {"model": str(model_dir), "data": str(demo3d), "category": "dome",
                                       "out": str(out), "device": "cpu"})
    summary = json.loads((out / "scores.json").read_text())
    ds = load_dataset(demo3d / "dome")
    assert result["n_scored"] == len(ds.samples) == summary["n_scored"]
    meta = json.loads((model_dir / mm.METADATA_FILE).read_text())
    assert summary["threshold"] == meta["threshold"] >= 3.0
    items = list(summary["items"].values())
    good = [i["score"] for i in items if i["label"] == "good" and i["split"] == "test"]
    bad = [i["score"] for i in items if i["label"] == "defective"]
    assert np.mean(bad) > np.mean(good)
    amap = np.load(out / items[0]["map"])
    assert amap.shape == (128, 128)
    assert summary["notes"] == [] and result["notes"] == []
    with pytest.raises(DefectScopeError, match="not a DefectScope model folder"):
        run_job("score_dataset", {"model": str(tmp_path), "data": str(demo3d), "out": str(tmp_path / "o")})


def test_an_engine_without_open3d_scores_3d_parts_from_rgb_and_says_so(model_dir: Path, demo3d: Path,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """The inspection-PC installer leaves open3d out: parts with point clouds are scored from their image with
    the distilled 3D stand-in (the same scores as asking for that mode), with a note, instead of failing."""
    import sys

    monkeypatch.setitem(sys.modules, "open3d", None)  # what an install without the '3d' extra sees
    out = tmp_path / "pred"
    result = run_job("score_dataset", {"model": str(model_dir), "data": str(demo3d), "category": "dome",
                                       "out": str(out), "splits": ["test"], "device": "cpu"})
    summary = json.loads((out / "scores.json").read_text())
    assert result["n_errors"] == 0 and summary["n_scored"] == result["n_scored"] > 0
    assert len(summary["notes"]) == 1 and "open3d is not installed" in summary["notes"][0]
    model = mm.MultimodalModel(model_dir)
    part = demo3d / "dome" / "test" / "dent" / "rgb" / "000.png"
    item = next(v for k, v in summary["items"].items() if k.endswith("dent/rgb/000.png"))
    assert item["score"] == pytest.approx(model.predict(rgb_path=part, mode="rgb_with_distilled_geo").score, abs=1e-5)


def test_cli_eval_and_infer_score_an_rgb_and_3d_model(model_dir: Path, demo3d: Path, tmp_path: Path) -> None:
    """`defectscope eval` and `infer` take an RGB + 3D model like any other (they used to load only the
    memory-bank format): eval scores each test part from its image and point cloud, infer scores loose images
    with the distilled 3D stand-in and says so."""
    from tests.test_cli import run_cli

    report = tmp_path / "r.json"
    proc = run_cli("eval", "--model", str(model_dir), "--data", str(demo3d), "--category", "dome",
                   "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    ds = load_dataset(demo3d / "dome")
    assert r["model_kind"] == "multimodal" and r["score_units"] == "good_std"
    assert r["n_test"] == sum(1 for s in ds.samples if s.split == "test") and not r["issues"]
    assert r["image_auroc"] >= 0.75 and r["pixel_auroc"] >= 0.8  # the 'both' mode's floor above
    model = mm.MultimodalModel(model_dir)
    part = demo3d / "dome" / "test" / "dent"
    by_path = {row["path"]: row for row in r["per_image"]}
    row = by_path[str(part / "rgb" / "000.png")]
    both = model.predict(part / "rgb" / "000.png", part / "xyz" / "000.tiff", cache_dir=tmp_path / "c")
    assert row["score"] == pytest.approx(both.score, abs=1e-5)
    assert row["verdict"] == ("NG" if both.score >= r["model_threshold"] else "OK")

    out = tmp_path / "infer"
    proc = run_cli("infer", "--model", str(model_dir), "--out", str(out), str(part / "rgb"))
    assert proc.returncode == 0, proc.stderr
    assert "distilled 3D stand-in" in proc.stdout
    from engine.predictions import read_predictions

    preds = read_predictions(out)
    assert len(preds.items) == len(list((part / "rgb").glob("*.png"))) and preds.score_units == "good_std"
    assert len(preds.notes) == 1 and "no point cloud" in preds.notes[0]
    item = preds.items["000"]
    stand_in = model.predict(rgb_path=part / "rgb" / "000.png", mode="rgb_with_distilled_geo")
    assert item.score == pytest.approx(stand_in.score, abs=1e-5)
    assert (out / item.extra["heatmap"]).is_file() and preds.anomaly_map("000").shape == (128, 128)
