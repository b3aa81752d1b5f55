"""Anomaly-guided pretraining in the workbench (AGSSP, issue 16): Model ▸ Pretrain on unlabelled images.

One request runs three engine jobs in a chain, each naming the previous one's output by its artifact reference
(so it works the same on a local and a remote engine): pseudo_boxes (the pool's anomaly maps and one-class pseudo
boxes), pretrain_backbone (the trunk learns from the maps), train_detector on the pseudo boxes with that trunk
frozen (detector pretraining). The pseudo boxes of the open dataset's images are shown in the Detect dock as
proposals, where they can be accepted as labels; the pretrained detector becomes the initialisation of the next
Model ▸ Train detector on the labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog

from app.gui.features.base import Feature, MenuEntry
from app.gui.pretrain_dialog import PretrainDialog
from engine.client import JobView
from engine.detections import Detections, on_dataset, read_detections, relocated
from engine.pseudo_pool_format import COCO_DIR
from engine.server.layout import artifact_ref

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

ANOMALY_TASK = "anomaly"
POOL_ARTIFACT = "pseudo_boxes"
BACKBONE_ARTIFACT = "backbone"
# Detector pretraining on pseudo boxes: the seed's ~10 epochs, the trunk (pretrained just before) kept frozen.
DETECTOR_PRETRAIN = {"epochs": 10, "freeze_trunk": True}


class PretrainingFeature(Feature):
    stage_changed = Signal(str)  # "pseudo_boxes", "backbone", "detector", "done" or "failed"

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.dialog_params: dict[str, Any] | None = None  # set by tests instead of the dialog
        self.job_overrides: dict[str, dict[str, Any]] = {}  # extra params per job kind (tests: short schedules)
        self.pool_dir: Path | None = None
        self.pool_moves: dict[Path, Path] = {}  # engine's copy of a pool folder -> the folder here (remote engine)
        self.pretrained_ref: str | None = None  # what the next detector training starts from
        self.stage = ""

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Pretrain on unlabelled images…", self.start, separator_before=True),
                MenuEntry("&Model", "Show pseudo boxes as &proposals", self.show_proposals)]

    # ----------------------------------------------------------------- the chain of jobs
    def start(self) -> None:
        w = self.window
        params = self.dialog_params
        if params is None:
            root = w.dataset.root if w.dataset is not None else None
            info, model_dir = w.models.model_info, w.models.model_dir
            anomaly = model_dir if info is not None and info.task == ANOMALY_TASK else None
            dialog = PretrainDialog([root] if root else [], root, anomaly, w, check_paths=w.link.is_local)
            if dialog.exec() != QDialog.DialogCode.Accepted:
                return
            params = dialog.params()
        self._submit("pseudo_boxes", params, self._on_pool, "Scoring the unlabelled images")

    def _submit(self, kind: str, params: dict[str, Any], on_finished: Any, what: str) -> None:
        w = self.window
        w.link.submit(kind, {**params, **self.job_overrides.get(kind, {})}, on_finished=on_finished,
                      on_error=lambda msg: self._failed(f"{what} could not start: {msg}"))
        self._set_stage(kind if kind != "train_detector" else "detector")
        w.status_message.emit(f"{what} in the engine (see Jobs)…")

    def _failed(self, message: str) -> None:
        self._set_stage("failed")
        self.window.show_error(message)

    def _set_stage(self, stage: str) -> None:
        self.stage = stage
        self.stage_changed.emit(stage)

    def _ok(self, job: JobView, what: str) -> bool:
        if job.state == "succeeded":
            return True
        if job.state == "failed":
            self._failed(f"{what} failed: {job.error}")
        else:
            self._set_stage("failed")
        return False

    def _on_pool(self, job: JobView) -> None:
        if not self._ok(job, "Scoring the unlabelled images"):
            return
        w = self.window
        warnings = (job.result or {}).get("warnings") or []
        if warnings:  # e.g. a labelled set in the pool whose test images were not kept out
            w.show_banner("Pseudo boxes: " + " ".join(warnings), "warning", tag="pretraining")
        self.pool_moves = _uploaded_pool(w, job)
        w.link.fetch_artifact_dir(job, POOL_ARTIFACT, self._pool_ready,
                                  lambda msg: w.show_error(f"Cannot fetch the pseudo boxes: {msg}"))
        self._submit("pretrain_backbone", {"pool": artifact_ref(job.id, POOL_ARTIFACT), **self._detector_shape()},
                     lambda j: self._on_backbone(j, job.id), "Pretraining the backbone")

    def _on_backbone(self, job: JobView, pool_job: str) -> None:
        if not self._ok(job, "Backbone pretraining"):
            return
        # the pool's pseudo boxes as a COCO set, named inside the pseudo_boxes artifact
        self._submit("train_detector", {"data": artifact_ref(pool_job, f"{POOL_ARTIFACT}/{COCO_DIR}"),
                                         "init": artifact_ref(job.id, BACKBONE_ARTIFACT), **DETECTOR_PRETRAIN,
                                         **self._detector_shape()},
                     self._on_detector, "Pretraining the detector on the pseudo boxes")

    def _detector_shape(self) -> dict[str, Any]:
        """The backbone and input size the user's next detector training uses: the pretrained trunk must match."""
        params = self.window.detection.detector_job_params
        return {k: params[k] for k in ("backbone", "image_size") if k in params}

    def _on_detector(self, job: JobView) -> None:
        if not self._ok(job, "Detector pretraining"):
            return
        self.pretrained_ref = artifact_ref(job.id, "model")
        # The next Model ▸ Train detector on the labels starts from it (its class layer starts afresh).
        self.window.detection.detector_job_params["init"] = self.pretrained_ref
        self._set_stage("done")
        self.window.status_message.emit("Pretraining done: Model ▸ Train detector on the labels now starts from "
                                        "the pretrained detector.")

    # ----------------------------------------------------------------- proposals
    def _pool_ready(self, folder: Path) -> None:
        self.pool_dir = folder
        self.show_proposals()

    def show_proposals(self) -> None:
        """The pseudo boxes on the open dataset's images in the Detect dock (threshold slider, accept as labels)."""
        w = self.window
        if self.pool_dir is None:
            w.status_message.emit("No pseudo boxes yet: Model ▸ Pretrain on unlabelled images makes them.")
            return
        if w.dataset is None:
            return
        folder, root, category, moves = self.pool_dir, w.dataset.root, w.category, dict(self.pool_moves)
        paths = {key: s.image_path for key, s in w.samples.items()}

        def load() -> Detections:
            return on_dataset(relocated(read_detections(folder), moves), paths, root, category)

        def show(dets: Detections) -> None:
            if not dets.items:
                w.status_message.emit(f"The pseudo boxes in {folder} are on other images than the open dataset's.")
                return
            w.detection.show_detections(dets)

        w.background(load, show, w.show_error)


def _uploaded_pool(w: MainWindow, job: JobView) -> dict[Path, Path]:
    """{the engine's copy of a pool folder: the folder of this computer it was uploaded from} (remote engines)."""
    pool = job.params.get("pool")
    moves = {}
    for i, there in enumerate(pool if isinstance(pool, list) else []):
        here = w.link.local_source(job, f"pool[{i}]")
        if here is not None and isinstance(there, str):
            moves[Path(there)] = here
    return moves
