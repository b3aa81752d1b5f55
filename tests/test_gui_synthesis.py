"""Model ▸ Synthesize defects with the real window (offscreen) and real engines on loopback: the dialog's fields
come from the jobs' params models, procedural synthesis runs in the engine, the gallery shows every sample with
its mask outlined and its type, a rejected sample leaves the set for good when Apply runs curate_synthetic_set,
and the set is offered for training. On a remote engine the set is downloaded like every job output and its
copy here is curated too; a folder that is not a synthetic set is refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSize, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from app.gui.engine_link import EngineSettings
from app.gui.synthesis_dialog import GENERATOR, PROCEDURAL, SynthesisDialog, generator_choices, shown_fields
from app.gui.synthetic_gallery import OUTLINE_RGB, THUMB, GalleryItem, render_thumbnail
from engine.client import JobView
from engine.datasets.imageio import read_mask
from engine.synthesis.synthetic_set import read_manifest
from tests import test_gui_job_outcomes as outcomes
from tests.test_defect_segmentation import CLASSES, write_mvtec
from tests.test_gui_workbench import open_and_wait

# A real main window with its own data home, and a second engine that may read only its own folder (remote).
home, window, remote_engine = outcomes.home, outcomes.window, outcomes.remote_engine


def _icon_rgb(item) -> np.ndarray:
    image = item.icon().pixmap(QSize(THUMB, THUMB)).toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8, count=image.sizeInBytes()).reshape(h, image.bytesPerLine())
    return rows[:, :w * 3].reshape(h, w, 3)


def _outlined(rgb: np.ndarray) -> int:
    return int((rgb == np.array(OUTLINE_RGB, np.uint8)).all(axis=2).sum())


def _synthesize_from_the_menu(qtbot, w, count: int = 2) -> dict:
    """Model ▸ Synthesize defects…: the real dialog, procedural, `count` per type; waits for the thumbnails."""
    seen: dict = {}

    def fill_and_accept() -> None:
        dialog = QApplication.activeModalWidget()
        seen["dialog"] = isinstance(dialog, SynthesisDialog)
        if not seen["dialog"]:
            dialog.reject()
            return
        seen["data"] = dialog.params()["data"]
        seen["kind"] = dialog.kind()
        dialog.procedural.set_value("count_per_type", count)
        dialog.procedural.set_value("shots_per_type", 2)
        dialog.accept()

    model_menu = w.menuBar().actions()[1].menu()
    [action] = [a for a in model_menu.actions() if "Synthesize" in a.text().replace("&", "")]
    QTimer.singleShot(200, fill_and_accept)
    with qtbot.waitSignal(w.synthesis.thumbnails_loaded, timeout=120_000):
        action.trigger()
    return seen


def test_the_dialog_is_the_params_models(qtbot, tmp_path):
    """Procedural and generator fields are the two jobs' own fields (defaults, bounds); a generator is a
    train_generator job's artifact or a folder holding generator.json; what is wrong is said."""
    data = tmp_path / "tiles"
    data.mkdir()
    trained = JobView(id="0123456789ab", kind="train_generator", state="succeeded",
                      params={"data": "/x/tiles", "preset": "cpu_tiny"}, created=2.0)
    others = [JobView(id="0123456789ac", kind="train_generator", state="failed", created=3.0),
              JobView(id="0123456789ad", kind="synthesize", state="succeeded", created=4.0)]
    dialog = SynthesisDialog(data, [], CLASSES, generator_choices([*others, trained]))
    qtbot.addWidget(dialog)
    assert list(dialog.procedural.values()) == shown_fields(PROCEDURAL, ("category", "method"))
    assert "count_per_type" in dialog.procedural.values() and "out" not in dialog.procedural.values()
    assert dialog.kind() == PROCEDURAL and dialog.errors() == []
    assert dialog.params()["data"] == str(data) and dialog.params()["count_per_type"] == 50  # the model's default
    assert ", ".join(CLASSES) in dialog.procedural.widget("classes").placeholderText()
    dialog.procedural.set_value("data", str(tmp_path / "nowhere"))
    assert dialog.errors() == [f"Dataset folder not found: {tmp_path / 'nowhere'}"]
    dialog.procedural.set_value("data", str(data))
    count = dialog.procedural.widget("count_per_type")
    assert (count.minimum(), count.maximum()) == (1, 100_000)  # the model's bounds

    dialog.generator_radio.setChecked(True)
    assert dialog.kind() == GENERATOR and dialog.stack.currentIndex() == 1
    assert list(dialog.sampler.values()) == shown_fields(GENERATOR, ("generator",))
    kind, params = dialog.job()
    assert kind == GENERATOR and params["generator"] == "job:0123456789ab/generator"  # the only usable one
    assert dialog.errors() == [] and not dialog.generator_folder.isEnabled()
    dialog.generator_box.setCurrentIndex(dialog.generator_box.count() - 1)  # a folder instead
    assert dialog.generator_folder.isEnabled()
    assert dialog.errors() == ["Choose a generator the engine trained (a train_generator job) or a generator "
                               "folder."]
    dialog.generator_folder.setText(str(data))
    assert dialog.errors() == [f"No generator.json in {data}"]
    (data / "generator.json").write_text("{}")
    assert dialog.errors() == [] and dialog.params()["generator"] == str(data)


def test_render_thumbnail_outlines_the_mask(tmp_path):
    import cv2

    (tmp_path / "train" / "crack").mkdir(parents=True)
    (tmp_path / "ground_truth" / "crack").mkdir(parents=True)
    image = np.full((400, 300, 3), 120, np.uint8)
    mask = np.zeros((400, 300), np.uint8)
    mask[100:300, 140:146] = 255  # a thin crack: still outlined at thumbnail scale
    cv2.imwrite(str(tmp_path / "train/crack/0000.png"), image)
    cv2.imwrite(str(tmp_path / "ground_truth/crack/0000_mask.png"), mask)
    thumb = render_thumbnail(tmp_path, GalleryItem("train/crack/0000.png", "ground_truth/crack/0000_mask.png",
                                                   "crack"))
    assert max(thumb.shape[:2]) == THUMB and thumb.shape[2] == 3
    ys, xs = np.nonzero((thumb == np.array(OUTLINE_RGB, np.uint8)).all(axis=2))
    scale = THUMB / 400
    assert len(ys) > 0 and ys.min() >= 100 * scale - 3 and ys.max() <= 300 * scale + 3
    assert xs.min() >= 140 * scale - 3 and xs.max() <= 146 * scale + 3


def test_synthesize_review_reject_apply_and_offer_on_a_local_engine(qtbot, window, tmp_path):
    w, syn = window, window.synthesis
    root = write_mvtec(tmp_path / "tiles", n_per_type=3)
    open_and_wait(qtbot, w, root)
    w.link.start(EngineSettings(mode="local", url="", token="", tls_ca=""))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=60_000)

    seen = _synthesize_from_the_menu(qtbot, w)
    assert seen == {"dialog": True, "data": str(root), "kind": PROCEDURAL}  # the open dataset, preselected
    gallery, folder = syn.gallery, syn.folder
    [job] = [j for j in w.link.jobs if j.kind == "synthesize"]
    assert job.state == "succeeded" and job.params["count_per_type"] == 2
    assert folder is not None and folder == Path(job.params["out"])  # the engine's own folder, read in place
    images = gallery.images()
    assert len(images) == 2 * len(CLASSES) and gallery.rejected() == []
    texts = sorted(gallery.list.item(i).text() for i in range(gallery.list.count()))
    assert texts == sorted(c for c in CLASSES for _ in range(2))  # each item says its type
    for i in range(gallery.list.count()):  # each thumbnail is the image with its mask outlined
        assert _outlined(_icon_rgb(gallery.list.item(i))) > 0
    assert gallery.parentWidget().windowTitle() == "Synthetic" and str(folder) in gallery.header.text()

    # reject one, Apply: curate_synthetic_set removes it on the engine, the gallery shows what is left
    manifest = read_manifest(folder)
    [row] = [r for r in manifest["samples"] if r["image"] == images[1]]
    assert read_mask(folder / row["mask"]).any()
    gallery.set_kept(images[1], False)
    assert gallery.rejected() == [images[1]] and gallery.count_label.text() == "3 kept, 1 rejected"
    with qtbot.waitSignal(syn.curated, timeout=60_000) as curated:
        gallery.apply_button.click()
        assert not gallery.apply_button.isEnabled()  # no second Apply while the first runs
    curate_job = curated.args[0]
    assert curate_job.state == "succeeded" and curate_job.refs["folder"] == f"job:{job.id}/synthetic_set"
    after = read_manifest(folder)
    assert len(after["samples"]) == len(manifest["samples"]) - 1 and row not in after["samples"]
    assert after["rejected"] == 1 and sum(after["per_type"].values()) == 3
    assert not (folder / row["image"]).exists() and not (folder / row["mask"]).exists()
    assert all((folder / r["image"]).is_file() and (folder / r["mask"]).is_file() for r in after["samples"])
    assert sorted(gallery.images()) == sorted(r["image"] for r in after["samples"])
    assert gallery.apply_button.isEnabled()

    # offered for training: the folder, as extra data, with the donors' draw
    assert f"--extra {folder}" in syn.offer and "--shots-per-type 2 --shots-seed 0" in syn.offer
    assert f"--data {root}" in syn.offer and w.banner.isVisible() and w.banner.text() == syn.offer
    assert "3 images" in syn.offer
    syn.offer = ""
    gallery.apply_button.click()  # nothing rejected now: no job, the set is offered as it is
    qtbot.waitUntil(lambda: bool(syn.offer), timeout=10_000)
    assert f"--extra {folder}" in syn.offer and [j.kind for j in w.link.jobs].count("curate_synthetic_set") == 1

    # the curate job refuses a folder that is not a synthetic set, saying so, and changes nothing
    outcome: list[JobView] = []
    good = root / "train" / "good" / "000.png"
    w.link.submit("curate_synthetic_set", {"folder": str(root), "reject": ["train/good/000.png"]},
                  on_finished=outcome.append)
    qtbot.waitUntil(lambda: bool(outcome), timeout=60_000)
    assert outcome[0].state == "failed" and outcome[0].error.startswith(f"{root}: not a synthetic set")
    assert good.is_file()


def test_on_a_remote_engine_the_set_is_downloaded_and_both_copies_are_curated(qtbot, window, tmp_path,
                                                                              remote_engine):
    w, syn = window, window.synthesis
    url, data_root = remote_engine
    root = write_mvtec(tmp_path / "tiles", n_per_type=3)  # outside the engine's data root: it is uploaded
    open_and_wait(qtbot, w, root)
    w.link.start(EngineSettings(mode="remote", url=url, token=outcomes.TOKEN))
    qtbot.waitUntil(lambda: w.link.state == "connected", timeout=30_000)

    _synthesize_from_the_menu(qtbot, w)
    [job] = [j for j in w.link.jobs if j.kind == "synthesize"]
    engine_set, here = Path(job.params["out"]), syn.folder
    assert job.refs["data"].startswith("upload:")
    assert here is not None and not here.is_relative_to(data_root.parent) and here != engine_set
    assert len(syn.gallery.images()) == 2 * len(CLASSES)
    reject = syn.gallery.images()[0]
    syn.gallery.set_kept(reject, False)
    with qtbot.waitSignal(syn.curated, timeout=60_000):
        syn.gallery.apply_button.click()
    for folder in (engine_set, here):  # the engine's set and the download here lost the same sample
        assert len(read_manifest(folder)["samples"]) == 2 * len(CLASSES) - 1 and not (folder / reject).exists()
    assert f"--extra {here}" in syn.offer and f"job:{job.id}/synthetic_set" in syn.offer
