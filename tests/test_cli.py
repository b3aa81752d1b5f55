"""The `defectscope` command line as a user runs it: real subprocesses, exit codes, reports, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.predictions import read_predictions
from tests.conftest import DEMO_CATEGORY

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "app.cli", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_wrong_dataset_path_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli("train", "anomaly", "--data", str(missing), "--category", "x", "--out", str(tmp_path / "r"))
    assert_clean_error(proc, str(missing), "does not exist")


def test_unknown_category_names_the_available_ones(demo_data, tmp_path):
    proc = run_cli("train", "anomaly", "--data", str(demo_data), "--category", "nope", "--out", str(tmp_path / "r"))
    assert_clean_error(proc, "nope", DEMO_CATEGORY)


def test_category_without_good_training_images(tmp_path):
    cat = tmp_path / "ds" / "part"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "scratch").mkdir(parents=True)
    cv2.imwrite(str(cat / "test" / "scratch" / "000.png"), np.full((64, 64, 3), 128, np.uint8))
    proc = run_cli("train", "anomaly", "--data", str(tmp_path / "ds"), "--category", "part", "--out", str(tmp_path / "r"))
    assert_clean_error(proc, "part")
    assert "good" in proc.stderr


def test_eval_with_empty_test_split(trained_model, tmp_path):
    cat = tmp_path / "ds" / "part"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "good").mkdir(parents=True)
    cv2.imwrite(str(cat / "train" / "good" / "000.png"), np.full((64, 64, 3), 128, np.uint8))
    proc = run_cli("eval", "--model", str(trained_model), "--data", str(tmp_path / "ds"), "--category", "part",
                   "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_missing_model_dir(tmp_path):
    proc = run_cli("infer", "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o"), str(tmp_path))
    assert_clean_error(proc, "nomodel")


def test_eval_report_has_the_contract_keys(trained_model, demo_data, tmp_path):
    report = tmp_path / "report.json"
    proc = run_cli("eval", "--model", str(trained_model), "--data", str(demo_data), "--category", DEMO_CATEGORY,
                   "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold", "n_test", "latency_ms", "provider"):
        assert key in r, key
    assert r["n_test"] == len(r["per_image"]) > 0
    assert r["provider"] == "CPUExecutionProvider"
    assert 0.0 < r["latency_ms"] < 5000
    assert "image AUROC" in proc.stdout


def test_infer_writes_heatmaps_and_the_same_scores_as_eval(trained_model, demo_data, tmp_path):
    test_dir = demo_data / DEMO_CATEGORY / "test"
    out = tmp_path / "infer"
    # run main() in a fresh interpreter and prove the inference path never imported torch
    code = (
        "import sys; from app.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'inference imported torch'; sys.exit(rc)"
    )
    proc = run_cli("infer", "--model", str(trained_model), "--out", str(out), str(test_dir), code=code)
    assert proc.returncode == 0, proc.stderr
    # the one predictions schema: what score_dataset writes and the GUI reads
    preds = read_predictions(out)
    rows = list(preds.items.values())
    n_images = len(list(test_dir.rglob("*.png")))
    assert len(rows) == n_images
    names = [r.extra["heatmap"] for r in rows]
    assert len(set(names)) == n_images  # test/<defect>/000.png files all get distinct names
    for key, row in preds.items.items():
        assert row.extra["heatmap"] == f"{key}_heatmap.png"
        assert row.extra["heatmap"].startswith(Path(row.path).parent.name + "_")
        assert row.split is None and row.verdict == ("NG" if row.score >= preds.threshold else "OK")
        heat = cv2.imread(str(out / row.extra["heatmap"]))
        src = cv2.imread(row.path)
        assert heat is not None and heat.shape == src.shape
        assert preds.anomaly_map(key) is not None
    # one inference path: eval and infer give the same score for the same file
    report = tmp_path / "r.json"
    assert run_cli("eval", "--model", str(trained_model), "--data", str(demo_data), "--category", DEMO_CATEGORY,
                   "--report", str(report)).returncode == 0
    by_path = {r["path"]: r["score"] for r in json.loads(report.read_text())["per_image"]}
    for row in rows:
        assert row.score == pytest.approx(by_path[row.path], abs=1e-5)


def test_infer_skips_a_corrupt_file_and_scores_the_rest(trained_model, demo_data, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = next((demo_data / DEMO_CATEGORY / "test" / "good").glob("*.png"))
    (folder / "ok.png").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(good.read_bytes()[:200])
    proc = run_cli("infer", "--model", str(trained_model), "--out", str(tmp_path / "o"), str(folder))
    assert proc.returncode == 0, proc.stderr
    preds = read_predictions(tmp_path / "o")
    assert [Path(r.path).name for r in preds.items.values()] == ["ok.png"]
    assert list(preds.errors) == ["broken"] and "broken.png" in preds.errors["broken"]
    assert "broken.png" in proc.stderr


def test_job_parameters_are_validated_with_field_names(tmp_path):
    from engine.errors import DefectScopeError
    from engine.jobs import run_job

    with pytest.raises(DefectScopeError, match="image_size"):
        run_job("train_anomaly", {"data": str(tmp_path), "out": str(tmp_path), "image_size": "big"})
    with pytest.raises(DefectScopeError, match="unknown job kind"):
        run_job("nope", {})


def test_datasets_inspect_lists_counts_and_issues(demo_data):
    proc = run_cli("datasets", "inspect", str(demo_data))
    assert proc.returncode == 0, proc.stderr
    assert "format mvtec" in proc.stdout and DEMO_CATEGORY in proc.stdout


def test_plain_folder_of_good_and_defective_images_trains_and_evaluates(demo_data, tmp_path):
    """An engineer's folder has no split: DefectScope makes one and eval never tests trained-on images."""
    folder = tmp_path / "parts"
    (folder / "good").mkdir(parents=True)
    (folder / "dent").mkdir()
    src = demo_data / DEMO_CATEGORY
    for i, f in enumerate(sorted((src / "train" / "good").glob("*.png"))[:20]):
        (folder / "good" / f"g{i:02d}.png").write_bytes(f.read_bytes())
    for i, f in enumerate(sorted((src / "test" / "dent").glob("*.png"))):
        (folder / "dent" / f"d{i:02d}.png").write_bytes(f.read_bytes())
    run = tmp_path / "run"
    proc = run_cli("train", "anomaly", "--data", str(folder), "--out", str(run), "--image-size", "128")
    assert proc.returncode == 0, proc.stderr
    report = tmp_path / "r.json"
    proc = run_cli("eval", "--model", str(run), "--data", str(folder), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    meta = json.loads((run / "model.json").read_text())
    tested_good = {Path(p["path"]).name for p in r["per_image"] if p["label"] == "good"}
    assert r["n_defective"] == 4 and 0 < r["n_good"] < 20
    trained = meta["training"]["n_train_images"] + meta["training"]["n_holdout_images"]
    assert trained + r["n_good"] == 20 and tested_good


def test_auto_split_is_stable_and_keeps_defects_for_testing(tmp_path):
    from engine.datasets import DEFECTIVE, GOOD, Sample
    from engine.datasets.splits import resolve_splits

    goods = [Sample(tmp_path / f"g{i}.png", label=GOOD) for i in range(200)]
    bads = [Sample(tmp_path / f"d{i}.png", label=DEFECTIVE) for i in range(5)]
    first = {s.image_path.name: s.split for s in resolve_splits(goods + bads)}
    again = {s.image_path.name: s.split for s in resolve_splits(goods[:100] + bads + goods[100:] + [
        Sample(tmp_path / "new.png", label=GOOD)])}
    assert all(again[k] == v for k, v in first.items())  # adding images never moves existing ones
    assert all(first[f"d{i}.png"] == "test" for i in range(5))
    n_test = sum(first[f"g{i}.png"] == "test" for i in range(200))
    assert 20 <= n_test <= 60


def test_datasets_export_writes_a_format_the_readers_load_back(demo_data, tmp_path):
    out = tmp_path / "as_yolo"
    p = run_cli("datasets", "export", str(demo_data / DEMO_CATEGORY), "--to", "yolo", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("yolo -> ")
    from engine.datasets import load_dataset

    source = load_dataset(demo_data / DEMO_CATEGORY)
    back = load_dataset(out, format="yolo")
    assert len(back.samples) == len(source.samples)
    assert sorted(s.label for s in back.samples) == sorted(s.label for s in source.samples)
    again = run_cli("datasets", "export", str(demo_data / DEMO_CATEGORY), "--to", "yolo", "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
