"""The workbench on a remote engine sends data, not paths: real engines on loopback, the "remote" one started with
--data-root its own folder only (so any path of this computer is refused), the real main window offscreen.

* Model ▸ Train on a local dataset: the dataset is uploaded (a row with a progress bar in the Jobs panel), the
  job runs on the engine's copy; Score dataset with the trained model (named by its job ref, not uploaded back)
  sends only what the engine lacks, and the heatmaps load on the local images;
* Model ▸ Train segmenter on masks drawn here: the exported annotated dataset travels, the segmenter loads;
* the unified model: train on one product of a local plant folder, then add a second one;
* Cancel on an upload's row stops it: nothing is submitted, and the banner says why;
* a model folder that exists only here is uploaded too (it used to be refused);
* Model ▸ Pretrain on unlabelled images: every folder of the pool (a list parameter) travels on its own, and the
  pseudo boxes the engine made on its copies show as proposals on the images here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app.gui.engine_link import EngineSettings
from app.gui.uploads import Upload, local_folders, with_refs
from engine.client import JobView
from engine.errors import DefectScopeError
from tests import test_gui_job_outcomes as outcomes
from tests.conftest import DEMO_CATEGORY
from tests.test_gui_workbench import open_and_wait

TOKEN = outcomes.TOKEN
# The fixtures of the job-outcome tests: a real main window, and a second engine that reads only its own folder.
home, window, remote_engine = outcomes.home, outcomes.window, outcomes.remote_engine



def _connect(qtbot, window, url: str) -> None:
    window.link.start(EngineSettings(mode="remote", url=url, token=TOKEN))
    qtbot.waitUntil(lambda: window.link.state == "connected", timeout=30_000)


def _engine_dir(data_root: Path) -> Path:
    return data_root.parent / "engine"  # the remote engine's --data-dir (tests/test_gui_job_outcomes.py)


def _seen_uploads(window) -> list[Upload]:
    seen: list[Upload] = []
    window.link.uploads_changed.connect(lambda ups: seen.extend(u for u in ups if u not in seen))
    return seen


def _wait_job(qtbot, window, kind: str, timeout: int = 240_000) -> JobView:
    def done() -> JobView | None:
        return next((j for j in window.link.jobs if j.kind == kind and j.done), None)

    qtbot.waitUntil(lambda: done() is not None or (window.banner.isVisible() and "could not" in window.banner.text()),
                    timeout=timeout)
    job = done()
    assert job is not None, window.banner.text()
    return job


def test_which_parameters_travel(tmp_path):
    """Local folders among the kind's path parameters travel; the engine's own outputs go by ref; a path that
    is not here is the engine's; a local file is refused naming its parameter; other parameters are untouched."""
    data, model, checkpoint = tmp_path / "set", tmp_path / "downloaded-model", tmp_path / "sam.pt"
    data.mkdir()
    model.mkdir()
    checkpoint.write_bytes(b"x")
    refs = {model.resolve(): "job:0123456789ab/model"}
    params, send = local_folders("score_dataset", {"model": str(model), "data": str(data), "category": str(data)},
                                 lambda p: refs.get(p.resolve()))
    assert send == {"data": data.resolve()}
    assert params == {"model": "job:0123456789ab/model", "data": str(data), "category": str(data)}
    params, send = local_folders("eval", {"model": "upload:abc/m", "data": "/srv/on/the/engine"}, refs.get)
    assert send == {} and params == {"model": "upload:abc/m", "data": "/srv/on/the/engine"}
    with pytest.raises(DefectScopeError, match=r"params\.checkpoint: .*sam\.pt is a file on this computer"):
        local_folders("import_sam", {"checkpoint": str(checkpoint)}, refs.get)
    # a list parameter: each local folder of it travels on its own and its ref goes back in its place
    pool = {"pool": [str(data), "/srv/pool", str(model)], "exclude": [], "scorer": "mutual"}
    params, send = local_folders("pseudo_boxes", pool, lambda p: refs.get(p.resolve()))
    assert send == {"pool[0]": data.resolve()}
    assert params == {"pool": [str(data), "/srv/pool", "job:0123456789ab/model"], "exclude": [], "scorer": "mutual"}
    assert with_refs(params, {"pool[0]": "upload:u1/set"})["pool"] == ["upload:u1/set", "/srv/pool",
                                                                        "job:0123456789ab/model"]
    assert params["pool"][0] == str(data)  # with_refs leaves the submitted params as they were
    with pytest.raises(DefectScopeError, match=r"params\.pool\[1\]: .*sam\.pt is a file"):
        local_folders("pseudo_boxes", {"pool": [str(data), str(checkpoint)]}, refs.get)


def test_cancel_an_upload_submits_nothing_and_says_why(qtbot, window, remote_engine, tmp_path):
    url, _data_root = remote_engine
    big = tmp_path / "big-set"
    big.mkdir()
    for i in range(8):  # incompressible, several chunks: the upload cannot be over before Cancel is clicked
        (big / f"part-{i}.bin").write_bytes(os.urandom(8 * 2**20))
    _connect(qtbot, window, url)
    panel = window.engine.jobs_panel
    refused: list[str] = []
    submitted: list[str] = []
    window.link.submit("train_anomaly", {"data": str(big)}, on_error=refused.append, on_done=submitted.append)
    [row] = panel.uploads.rows()
    assert panel.uploads.isVisible() and "big-set" in row.label.text() and row.cancel_button.isEnabled()
    row.cancel_button.click()
    qtbot.waitUntil(lambda: bool(refused), timeout=30_000)
    assert "cancelled" in refused[0] and str(big) in refused[0] and "nothing was submitted" in refused[0]
    assert submitted == []
    assert window.link.uploads == [] and panel.uploads.rows() == [] and not panel.uploads.isVisible()
    qtbot.wait(2500)  # two polls: had anything been submitted, the engine would list it
    assert window.link.jobs == []


def test_a_model_folder_only_here_is_uploaded_not_refused(qtbot, window, demo_data, tmp_path,
                                                          remote_engine):
    url, data_root = remote_engine
    model = tmp_path / "only-here"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"not a model")
    (model / "model.json").write_text(json.dumps({"category": DEMO_CATEGORY, "threshold": 1.0}))
    _connect(qtbot, window, url)
    open_and_wait(qtbot, window, demo_data / DEMO_CATEGORY)
    window.models.set_model(model)
    seen = _seen_uploads(window)
    window.scoring.score_dataset()
    job = _wait_job(qtbot, window, "score_dataset", timeout=120_000)
    engine_dir = _engine_dir(data_root)
    # Both folders of this computer travelled; the engine ran on its own copies of them.
    assert {u.param for u in seen} == {"model", "data"} and all(u.bytes_total > 0 for u in seen)
    for name in ("model", "data"):
        assert Path(job.params[name]).is_relative_to(engine_dir), job.params[name]
    assert (Path(job.params["model"]) / "model.onnx").read_bytes() == b"not a model"
    assert job.state == "failed"  # not an ONNX model: refused by the runtime, on the engine


@pytest.mark.slow
def test_train_score_and_see_the_heatmaps_on_a_remote_engine(qtbot, window, demo_data, remote_engine):
    url, data_root = remote_engine
    root = demo_data / DEMO_CATEGORY  # a folder of this computer, outside the engine's data root
    _connect(qtbot, window, url)
    open_and_wait(qtbot, window, root)
    seen = _seen_uploads(window)
    progress: list[int] = []
    window.link.uploads_changed.connect(
        lambda ups: progress.extend(r.bar.value() for r in window.engine.jobs_panel.uploads.rows()))

    def fill_and_accept() -> None:
        dialog = QApplication.activeModalWidget()
        for name, value in (("image_size", 128), ("bank_size", 256), ("device", "cpu")):
            dialog.fields.set_value(name, value)
        dialog.accept()

    QTimer.singleShot(300, fill_and_accept)
    window.training.open_train_dialog()  # Model ▸ Train…, the real dialog
    trained = _wait_job(qtbot, window, "train_anomaly")
    assert trained.state == "succeeded", trained
    engine_copy = Path(trained.params["data"])
    assert engine_copy.is_relative_to(_engine_dir(data_root)) and trained.refs["data"].startswith("upload:")
    assert engine_copy.name == root.name  # the category folder keeps its name (its category) on the engine
    [upload] = seen
    assert upload.param == "data" and upload.files == sum(1 for p in root.rglob("*") if p.is_file())
    assert upload.bytes_done == upload.bytes_total > 0 and max(progress) > 0  # the row showed progress

    qtbot.waitUntil(lambda: trained.id in window.models.panel._job_items, timeout=10_000)
    with qtbot.waitSignal(window.models.panel.model_activated, timeout=60_000):
        window.models.panel.activate_row(0)  # downloaded with checksums into the workbench's cache
    loaded: list[int] = []
    window.scoring.predictions_loaded.connect(loaded.append)
    window.scoring.score_dataset()
    qtbot.waitUntil(lambda: bool(loaded) or "Scor" in window.banner.text(), timeout=240_000)
    assert loaded, window.banner.text()
    [score] = [j for j in window.link.jobs if j.kind == "score_dataset"]
    assert score.refs["model"] == trained.artifact_ref("model")  # the engine's own model: named, not sent back
    assert [u.param for u in seen] == ["data", "data"]  # only the dataset travelled again (content-addressed)
    key = window.browser.visible_keys()[0]
    with qtbot.waitSignal(window.image_view.image_shown, timeout=10_000, check_params_cb=lambda k: k == key):
        window.browser.select_key(key)
    assert window.image_view.heatmap_item.image is not None


@pytest.mark.slow
def test_train_the_segmenter_on_masks_drawn_here_on_a_remote_engine(qtbot, window, demo_data,
                                                                    remote_engine):
    from engine.datasets.types import GOOD

    url, data_root = remote_engine
    w = window
    _connect(qtbot, w, url)
    open_and_wait(qtbot, w, demo_data / DEMO_CATEGORY)
    good_key = next(k for k, s in w.samples.items() if s.label == GOOD)
    with qtbot.waitSignal(w.image_view.image_shown, timeout=10_000, check_params_cb=lambda k: k == good_key):
        w.browser.select_key(good_key)
    qtbot.waitUntil(lambda: w.annotation.controller.editor is not None
                    and w.annotation.controller.editor.ann.key == good_key, timeout=10_000)
    w.annotation.panel.class_combo.setCurrentText("scratch")
    w.annotation.controller._on_polygon([(60.0, 60.0), (120.0, 64.0), (118.0, 80.0), (62.0, 76.0)])
    w.annotation.segmenter_job_params = {"input_size": 128, "epochs": 2, "time_budget_s": 60,
                                         "synthetic_images": 6, "holdout_fraction": 0.0, "device": "cpu"}
    submitted: list[str] = []
    w.annotation.train_segmenter(on_submitted=submitted.append)  # no "needs the local engine" refusal
    qtbot.waitUntil(lambda: bool(submitted) or w.banner.isVisible(), timeout=60_000)
    assert submitted, w.banner.text()
    job = _wait_job(qtbot, w, "train_segmenter")
    assert job.state == "succeeded", job
    assert Path(job.params["data"]).is_relative_to(_engine_dir(data_root))
    qtbot.waitUntil(lambda: w.annotation.controller.segmenter is not None, timeout=60_000)
    meta = json.loads((w.annotation.controller.segmenter_dir / "segmenter.json").read_text())
    trained_on = {Path(p).name for p in meta["training"]["images_train"]}
    assert w.samples[good_key].image_path.name in trained_on  # the mask drawn here travelled and was learned


@pytest.mark.slow
def test_add_a_product_to_a_unified_model_on_a_remote_engine(qtbot, window, tmp_path, remote_engine):
    pytest.importorskip("torch", reason="the engine trains the unified model with torch")
    from engine.datasets.demo import generate_demo_dataset

    url, data_root = remote_engine
    plant = generate_demo_dataset(tmp_path / "plant", categories=["washer", "wood"], n_train=8, n_test_good=3,
                                  n_test_defect_per_type=1, seed=3)
    w = window
    _connect(qtbot, w, url)
    open_and_wait(qtbot, w, plant)

    def step(products: list[str]) -> JobView:
        dialog = w.unified.dialog()
        qtbot.addWidget(dialog)
        dialog.set_products(products)
        dialog.epochs.setValue(2)
        if dialog.image_size.isEnabled():
            dialog.image_size.setValue(64)
        dialog.device_box.setCurrentText("cpu")
        assert dialog.errors() == []
        submitted: list[str] = []
        w.unified.submit(dialog.params(), on_done=submitted.append)
        qtbot.waitUntil(lambda: bool(submitted) or w.banner.isVisible(), timeout=60_000)
        assert submitted, w.banner.text()
        with qtbot.waitSignal(w.link.job_finished, timeout=240_000,
                              check_params_cb=lambda job: job.id == submitted[0]) as finished:
            pass
        job = finished.args[0]
        assert job.state == "succeeded", job
        assert Path(job.params["data"]).is_relative_to(_engine_dir(data_root))
        return job

    first = step(["washer"])
    qtbot.waitUntil(lambda: first.id in w.models.panel._job_items, timeout=10_000)
    second = step(["wood"])  # the newest unified model is preselected: a resume by its job ref
    assert second.refs["resume"] == f"job:{first.id}/model"
    assert second.result["products"] == ["washer", "wood"]


def test_pretrain_pool_folders_travel_and_proposals_show_here(qtbot, window, tmp_path, remote_engine):
    pytest.importorskip("torch", reason="mutual scoring needs torch")
    import shutil

    from tests.test_detector_train import write_voc

    url, data_root = remote_engine
    w, pre, det = window, window.pretraining, window.detection
    root = write_voc(tmp_path / "shapes", {"train": 10, "val": 2, "test": 4}, seed=5)
    extra = tmp_path / "line-camera"  # a second folder of unlabelled images
    extra.mkdir()
    for image in sorted(write_voc(tmp_path / "more", {"train": 6}, seed=6).glob("JPEGImages/*.png")):
        shutil.copy(image, extra / image.name)
    _connect(qtbot, window, url)
    open_and_wait(qtbot, w, root)
    seen = _seen_uploads(w)
    pre.dialog_params = {"pool": [str(root), str(extra)], "scorer": "mutual", "exclude": [str(root)],
                         "references": 4, "device": "cpu"}
    with qtbot.waitSignal(det.detections_loaded, timeout=300_000):
        pre.start()
    assert {u.param for u in seen} == {"pool[0]", "pool[1]", "exclude[0]"}
    job = next(j for j in w.link.jobs if j.kind == "pseudo_boxes")
    engine_dir = _engine_dir(data_root)
    assert [Path(p).name for p in job.params["pool"]] == ["shapes", "line-camera"]
    assert all(Path(p).is_relative_to(engine_dir) for p in job.params["pool"]), job.params["pool"]
    # the engine's boxes are on its copies; shown here on the open dataset's own images, none on its test split
    shown = det.detections
    assert shown.items and set(shown.items) <= set(w.samples) and shown.is_for(root, None)
    assert all(Path(item.path).is_relative_to(root) for item in shown.items.values())
    test_keys = {k for k, s in w.samples.items() if s.split == "test"}
    assert not set(shown.items) & test_keys
    pool = json.loads((Path(job.params["out"]) / "pool.json").read_text())
    assert pool["excluded"]["count"] == len(test_keys)
    for j in w.link.jobs:  # the rest of the chain is the local test's business
        if not j.done:
            w.link.cancel(j.id)
