"""Model formats have one owner (engine.runtime.model_format): what a folder holds, its threshold and units, and
the scorer that eval, infer, score_dataset and auto-prompts all open through it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelError
from engine.runtime.model_format import (
    MODEL_FILE,
    MODEL_METADATA_FILE,
    ModelFormat,
    is_model_folder,
    model_formats,
    open_model,
    read_model_info,
    register_model_format,
)
from tests.conftest import DEMO_CATEGORY
from tests.test_cli import run_cli


def test_a_memory_bank_model_is_told_by_its_metadata(trained_model: Path) -> None:
    info = read_model_info(trained_model)
    assert (info.task, info.kind, info.score_units) == ("anomaly", "memory_bank", "normalised")
    assert info.threshold == pytest.approx(0.5) and info.folder == trained_model and info.scores_images
    assert info.metadata["kind"] == "anomaly/patchcore" and is_model_folder(trained_model)
    scorer = open_model(trained_model, device="cpu")
    assert scorer.info == info and scorer.provider == "CPUExecutionProvider" and scorer.notes == []


def test_a_unified_model_json_is_its_own_kind(trained_model: Path, tmp_path: Path) -> None:
    """Same files as the memory-bank model, told apart by model.json's content (older folders carry no kind)."""
    folder = tmp_path / "u"
    shutil.copytree(trained_model, folder)
    meta = json.loads((folder / MODEL_METADATA_FILE).read_text())
    (folder / MODEL_METADATA_FILE).write_text(json.dumps({**meta, "kind": "anomaly/unified"}))
    assert read_model_info(folder).kind == "unified"
    del meta["kind"]
    (folder / MODEL_METADATA_FILE).write_text(json.dumps(meta))
    assert read_model_info(folder).kind == "memory_bank"


def test_a_segmenter_is_a_model_that_does_not_score(tmp_path: Path) -> None:
    from engine.runtime import segmenter_format as fmt

    for name in (fmt.ENCODER_FILE, fmt.DECODER_FILE):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / fmt.METADATA_FILE).write_text(json.dumps({"format": fmt.FORMAT}))
    info = read_model_info(tmp_path)
    assert (info.task, info.kind, info.threshold, info.scores_images) == ("segmenter", "segmenter", None, False)
    with pytest.raises(ModelError, match="does not score images"):
        open_model(tmp_path)


@pytest.mark.parametrize("case", ["missing", "empty", "bad_json", "no_onnx", "bad_threshold", "not_object"])
def test_what_is_not_a_model_is_one_clear_error_naming_it(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "m"
    if case != "missing":
        folder.mkdir()
    bad = {"bad_json": "{nope", "no_onnx": "{}", "bad_threshold": '{"threshold": "high"}', "not_object": "[1]"}
    if case in bad:
        (folder / MODEL_METADATA_FILE).write_text(bad[case])
        if case not in ("no_onnx",):
            (folder / MODEL_FILE).write_bytes(b"")
    expected = {"missing": "does not exist", "empty": "not a DefectScope model folder", "bad_json": "unreadable",
                "no_onnx": "model.onnx missing", "bad_threshold": "threshold must be a number",
                "not_object": "JSON object"}[case]
    with pytest.raises(ModelError, match=expected) as err:
        read_model_info(folder)
    assert str(folder) in str(err.value)
    assert not is_model_folder(folder)


def test_a_new_format_is_one_registration(tmp_path: Path) -> None:
    """What the next model kinds (e.g. generators) will do: register, and every caller knows the folder."""
    fmt = ModelFormat("test_generator", "generator", "generator.json", (), "none", None, None)
    register_model_format(fmt)
    try:
        (tmp_path / "generator.json").write_text("{}")
        info = read_model_info(tmp_path)
        assert (info.task, info.kind) == ("generator", "test_generator") and is_model_folder(tmp_path)
        with pytest.raises(ValueError, match="task must be one of"):
            register_model_format(ModelFormat("x", "oracle", "x.json", (), "none", None, None))
    finally:
        from engine.runtime import model_format

        model_format._FORMATS.pop("test_generator")
    assert "test_generator" not in model_formats()


@pytest.fixture(scope="module")
def unified_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny unified model (2 epochs, 64 px, 8 images): seconds, enough to be scored."""
    pytest.importorskip("torch")
    from engine.datasets.demo import generate_demo_dataset
    from engine.jobs import run_job

    root = tmp_path_factory.mktemp("uni")
    data = generate_demo_dataset(root / "demo", categories=[DEMO_CATEGORY], n_train=8, n_test_good=3,
                                 n_test_defect_per_type=1, seed=5)
    run_job("train_unified", {"data": str(data), "categories": [DEMO_CATEGORY], "out": str(root / "model"),
                              "image_size": 64, "epochs": 2, "device": "cpu"})
    return root / "model", data


@pytest.mark.slow
def test_cli_eval_and_infer_score_a_unified_model(unified_model: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = unified_model
    assert read_model_info(model_dir).kind == "unified"
    report = tmp_path / "r.json"
    proc = run_cli("eval", "--model", str(model_dir), "--data", str(data), "--category", DEMO_CATEGORY,
                   "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["model_kind"] == "unified" and r["n_test"] == len(r["per_image"]) > 0 and not r["issues"]
    out = tmp_path / "infer"
    proc = run_cli("infer", "--model", str(model_dir), "--out", str(out), str(data / DEMO_CATEGORY / "test"))
    assert proc.returncode == 0, proc.stderr
    from engine.predictions import read_predictions

    preds = read_predictions(out)
    by_path = {row["path"]: row["score"] for row in r["per_image"]}
    assert set(by_path) == {i.path for i in preds.items.values()}
    for item in preds.items.values():  # one scoring path: the same score for the same file
        assert item.score == pytest.approx(by_path[item.path], abs=1e-5) and np.isfinite(item.score)
