"""Model ▸ Pretrain on unlabelled images with the real window (offscreen) and a real local engine: the chain of
pseudo_boxes, pretrain_backbone and detector pretraining runs, the open dataset's pseudo boxes show in the Detect
dock as proposals and can be accepted as labels, and the next detector training starts from the pretrained one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")
pytest.importorskip("torch", reason="pretraining needs torch")

from app.gui.main_window import MainWindow
from app.gui.pretrain_dialog import PretrainDialog
from tests.test_gui_workbench import open_and_wait


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def test_dialog_builds_the_pseudo_boxes_job_and_refuses_an_empty_pool(qtbot, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    dialog = PretrainDialog([root], root, None)
    qtbot.addWidget(dialog)
    params = dialog.params()
    assert params["pool"] == [str(root)] and params["scorer"] == "mutual" and params["exclude"] == [str(root)]
    assert not dialog.model_button.isEnabled()
    assert dialog.errors() == []
    dialog.folders.clear()
    assert dialog.errors() == ["Add at least one folder of unlabelled images."]
    dialog.folders.addItem(str(tmp_path / "nowhere"))
    assert dialog.errors() == [f"Folder not found: {tmp_path / 'nowhere'}"]
    with_model = PretrainDialog([root], None, tmp_path / "anomaly_model")
    qtbot.addWidget(with_model)
    assert with_model.model_button.isChecked() and with_model.params()["scorer"].endswith("anomaly_model")
    assert with_model.params()["exclude"] == [] and not with_model.exclude.isEnabled()


def test_pretrain_chain_proposals_accept_and_next_training_starts_from_it(qtbot, window, tmp_path):
    from app.gui.engine_link import EngineSettings
    from tests.test_detector_train import write_voc

    w, pre, det = window, window.pretraining, window.detection
    root = write_voc(tmp_path / "shapes", {"train": 16, "val": 2, "test": 4}, seed=3)
    open_and_wait(qtbot, w, root)
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)

    # the dataset is its own unlabelled pool; its test images must stay out of it
    pre.dialog_params = {"pool": [str(root)], "scorer": "mutual", "exclude": [str(root)], "references": 4,
                         "device": "cpu"}
    pre.job_overrides = {"pretrain_backbone": {"epochs": 1, "image_size": 128, "batch_size": 8, "device": "cpu"},
                         "train_detector": {"epochs": 2, "image_size": 128, "batch_size": 8, "device": "cpu"}}
    with qtbot.waitSignal(det.detections_loaded, timeout=300_000):
        pre.start()
    shown = det.detections
    assert shown.classes == ["anomaly"] and shown.is_for(root, None)
    assert set(shown.items) <= set(w.samples) and shown.items
    test_keys = {k for k, s in w.samples.items() if s.split == "test"}
    assert not set(shown.items) & test_keys  # excluded from the pool, so no proposals there
    qtbot.waitUntil(lambda: pre.stage in ("done", "failed"), timeout=600_000)
    assert pre.stage == "done", [j.error for j in w.link.jobs if j.state == "failed"]
    assert det.detector_job_params["init"] == pre.pretrained_ref and pre.pretrained_ref.startswith("job:")

    # the detector pretraining ran on the pool's pseudo boxes with the pretrained trunk kept frozen
    jobs = {j.kind: j for j in w.link.jobs}
    agdp = jobs["train_detector"]
    assert agdp.params["freeze_trunk"] is True and agdp.params["init"].endswith("backbone")
    meta = json.loads((Path(agdp.result["run_dir"]) / "detector.json").read_text())
    assert meta["classes"] == ["anomaly"]
    assert meta["training"]["init"]["from"] == agdp.params["init"]
    pool = json.loads((Path(jobs["pseudo_boxes"].params["out"]) / "pool.json").read_text())
    assert pool["excluded"]["count"] == len(test_keys)

    # a proposal becomes a label of its image
    key = max(shown.items, key=lambda k: len(shown.items[k].scores))
    det.panel.spin.setValue(0.0)
    w.browser.select_key(key)
    editor = lambda: w.annotation.controller.editor  # noqa: E731
    qtbot.waitUntil(lambda: editor() is not None and editor().ann.key == key, timeout=10_000)
    assert det.accept_image() >= 1
    ann = w.annotation.controller.store.load(key, 1, 1)
    assert "anomaly" in {s.class_name for s in ann.shapes if s.source == "detector"}
