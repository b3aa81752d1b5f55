"""The unified model from the workbench: train one on a product, then add a product to it (Model ▸ Train a
unified model, or add products), through a real local engine; the dialog refuses what the engine would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")
pytest.importorskip("torch", reason="training needs torch")

from PySide6.QtCore import Qt

from app.gui.main_window import MainWindow
from app.gui.unified_dialog import NEW_MODEL, UnifiedDialog, UnifiedRun, unified_runs
from tests.test_gui_workbench import open_and_wait

PRODUCTS = ["washer", "wood"]


@pytest.fixture(scope="module")
def two_products(tmp_path_factory) -> Path:
    from engine.datasets.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("unified") / "plant"
    return generate_demo_dataset(root, categories=PRODUCTS, n_train=8, n_test_good=3, n_test_defect_per_type=1,
                                 seed=3)


def _item(dialog: UnifiedDialog, name: str):
    return next(dialog.products.item(i) for i in range(dialog.products.count())
                if dialog.products.item(i).data(Qt.ItemDataRole.UserRole) == name)


def test_dialog_greys_out_learned_products_and_resumes_from_the_chosen_model(qtbot, two_products):
    run = UnifiedRun("washer (job 1)", "/engine/jobs/1/artifacts/model", ("washer",), 128)
    dialog = UnifiedDialog(two_products, PRODUCTS, [run], add_to=run)
    qtbot.addWidget(dialog)
    assert dialog.run() == run
    assert not _item(dialog, "washer").flags() & Qt.ItemFlag.ItemIsUserCheckable
    assert "already learned" in _item(dialog, "washer").text()
    assert not dialog.image_size.isEnabled() and dialog.image_size.value() == 128
    assert any("Tick at least one product" in e for e in dialog.errors())
    dialog.set_products(["wood"])
    assert dialog.errors() == []
    assert dialog.params() == {"data": str(two_products), "categories": ["wood"], "epochs": 50, "device": "auto",
                               "resume": run.ref, "image_size": 128}
    dialog.more_edit.setText("washer")  # typed by hand: still refused
    assert any("Already learned by this model: washer" in e for e in dialog.errors())
    dialog.more_edit.setText("gearbox")
    assert any("No category folder" in e and "gearbox" in e for e in dialog.errors())
    dialog.more_edit.clear()
    dialog.model_box.setCurrentText(NEW_MODEL)
    assert dialog.image_size.isEnabled() and _item(dialog, "washer").flags() & Qt.ItemFlag.ItemIsUserCheckable
    assert dialog.chosen_products() == ["wood"]  # the tick survives switching the model
    assert "resume" not in dialog.params()


def test_unified_runs_lists_succeeded_jobs_newest_first() -> None:
    jobs = [{"id": "a", "kind": "train_unified", "state": "succeeded", "created": 1.0,
             "params": {"out": "/j/a", "categories": ["x"], "image_size": 64}, "result": {"products": ["x"]}},
            {"id": "b", "kind": "train_unified", "state": "failed", "created": 3.0, "params": {"out": "/j/b"}},
            {"id": "c", "kind": "train_anomaly", "state": "succeeded", "created": 4.0, "params": {"out": "/j/c"}},
            {"id": "d", "kind": "train_unified", "state": "succeeded", "created": 2.0,
             "params": {"out": "/j/d", "resume": "/j/a", "categories": ["y"]}, "result": {"products": ["x", "y"]}}]
    runs = unified_runs(jobs)
    assert [(r.engine_path, r.products) for r in runs] == [("/j/d", ("x", "y")), ("/j/a", ("x",))]
    assert [r.ref for r in runs] == ["job:d/model", "job:a/model"]  # what a resume sends to the engine


def test_train_then_add_a_product_from_the_workbench(qtbot, two_products, tmp_path, monkeypatch):
    """Base step on washer, then wood added to that model by a second job that resumes from the first job's
    folder; the result covers both products, shows in the Models panel and scores with the ONNX runtime."""
    from app.gui.engine_link import EngineSettings
    from engine.datasets.imageio import read_image
    from engine.runtime import AnomalyModel

    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    open_and_wait(qtbot, w, two_products)
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)

    def run_step(products: list[str], expect_resume: str | None):
        dialog = w.unified.dialog()
        qtbot.addWidget(dialog)
        assert (dialog.run().engine_path if dialog.run() else None) == expect_resume
        dialog.set_products(products)
        dialog.epochs.setValue(2)
        if dialog.image_size.isEnabled():
            dialog.image_size.setValue(64)
        dialog.device_box.setCurrentText("cpu")
        assert dialog.errors() == []
        submitted: list[str] = []
        w.unified.submit(dialog.params(), on_done=submitted.append)
        qtbot.waitUntil(lambda: bool(submitted), timeout=30_000)
        with qtbot.waitSignal(w.link.job_finished, timeout=240_000,
                              check_params_cb=lambda job: job.id == submitted[0]) as finished:
            pass
        job = finished.args[0]
        assert job.state == "succeeded", job
        return job

    first = run_step(["washer"], None)
    assert first.result["products"] == ["washer"]
    qtbot.waitUntil(lambda: first.id in w.models.panel._job_items, timeout=10_000)

    second = run_step(["wood"], first.params["out"])  # the newest unified model is preselected
    assert second.refs["resume"] == f"job:{first.id}/model"  # named by reference, resolved by the engine
    assert second.params["resume"] == first.params["out"]
    assert second.result["products"] == ["washer", "wood"]
    qtbot.waitUntil(lambda: "covers washer, wood" in w.statusBar().currentMessage(), timeout=10_000)
    qtbot.waitUntil(lambda: second.id in w.models.panel._job_items, timeout=10_000)

    folder = Path(second.params["out"])
    meta = json.loads((folder / "model.json").read_text())
    assert meta["products"] == ["washer", "wood"] and meta["kind"] == "anomaly/unified"
    model = AnomalyModel(folder, device="cpu")
    wood_test = sorted((two_products / "wood" / "test" / "good").iterdir())[0]
    pred = model.predict(read_image(wood_test))
    assert pred.anomaly_map.shape == read_image(wood_test).shape[:2] and pred.score == pred.score
    w.close()
