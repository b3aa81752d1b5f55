"""Prompts and annotation: the Annotate dock (drawing, the promptable segmenter), Model ▸ Propose defect masks
from the anomaly maps, and Model ▸ Train segmenter on the masks drawn here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QDockWidget, QWidget

from app.gui.annotation_tools import AnnotationController, AnnotationPanel
from app.gui.features.base import Feature, MenuEntry
from engine.client import JobView
from engine.errors import DefectScopeError
from engine.home import default_data_home

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class AnnotationFeature(Feature):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        # What "Train segmenter" asks of the engine besides the data (the job kind's defaults otherwise).
        self.segmenter_job_params: dict[str, Any] = {"synthetic_images": 300}
        self.panel = AnnotationPanel()
        self.controller = AnnotationController(window.image_view, self.panel, window)
        window.image_view.image_shown.connect(self._on_image_shown)
        window.dataset_loaded.connect(self._on_dataset)

    def dock_widget(self) -> QWidget:
        return self.panel

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Propose defect masks from the anomaly maps", self.propose_masks),
                MenuEntry("&Model", "Train &segmenter on the defect masks", self.train_segmenter)]

    def _on_dataset(self, _root: str) -> None:
        ds = self.window.dataset
        if ds is None:
            return
        defects = {s.defect_type for s in ds.samples if s.defect_type and s.defect_type != "good"}
        self.controller.set_dataset(ds.root, sorted(set(ds.class_names) | defects))

    def _on_image_shown(self, key: str) -> None:
        """Annotation needs the image's real size; the next images are encoded for the segmenter meanwhile."""
        w = self.window
        size = w.image_view.image_size
        sample = w.samples.get(key)
        if size is None or sample is None or key != w.shown_key:
            return
        self.controller.show_image(key, sample.image_path, *size, sample)
        visible = w.browser.visible_keys()
        if key in visible:
            i = visible.index(key)
            self.controller.prefetch([w.samples[k].image_path for k in visible[i + 1:i + 3] if k in w.samples])

    # ----------------------------------------------------------------- proposals from the anomaly maps
    def propose_masks(self) -> None:
        """Batch auto-prompts: the engine turns each image's anomaly blobs into segmenter proposals."""
        w = self.window
        seg, model_dir = self.controller.segmenter_dir, w.models.model_dir
        if w.dataset is None or model_dir is None or seg is None:
            w.show_error("Needs an open dataset, an anomaly model (Models panel) and a segmenter model "
                         "(Annotate ▸ Segmenter model…).")
            return
        # On a remote engine the link names its own outputs by ref and uploads the other folders.
        params = {"model": w.link.engine_path(model_dir, "model"),
                  "segmenter": w.link.engine_path(seg, "segmenter"), "data": str(w.dataset.root)}
        if w.category:
            params["category"] = w.category
        w.link.submit("propose_masks", params, on_finished=self._on_proposed,
                      on_error=lambda msg: w.show_error(f"Proposals could not start: {msg}"))
        w.status_message.emit("Proposing masks in the engine (see Jobs).")

    def _on_proposed(self, job: JobView) -> None:
        w = self.window
        if job.state == "succeeded":
            # Proposals on an uploaded dataset name the engine's copy: they are about the folder sent from here.
            source = w.link.local_source(job, "data")
            w.link.fetch_artifact_dir(job, "proposals", lambda folder: self._on_proposals(folder, source),
                                      lambda msg: w.show_error(f"Cannot fetch the proposals: {msg}"))
        elif job.state == "failed":
            w.show_error(f"Proposing masks failed: {job.error}")

    def _on_proposals(self, folder: Path, data_root: Path | None = None) -> None:
        w = self.window

        def show(summary: dict) -> None:
            data = data_root or Path(summary.get("data", ""))
            if w.dataset is None or data.resolve() != w.dataset.root.resolve():
                w.status_message.emit("Proposals are for another dataset: not shown.")
                return
            n = self.controller.set_pending(summary.get("items", {}))
            w.findChild(QDockWidget, "Annotate").raise_()
            w.status_message.emit(f"{n} proposed masks on {len(summary.get('items', {}))} images: "
                                  "Enter keeps, Del rejects.")

        w.background(lambda: json.loads((Path(folder) / "proposals.json").read_text()), show,
                     lambda msg: w.show_error(f"Cannot read the proposals: {msg}"))

    # ----------------------------------------------------------------- segmenter training
    def segmenter_training_data(self) -> Path:
        """The open dataset with the engineer's drawn annotations as its labels, written as an MVTec layout
        (images linked, masks rasterised) for a train_segmenter job. Runs off the GUI thread.

        A remote engine is sent this folder (EngineLink.submit uploads it): an upload sends the files the links
        point to, and only those the engine lacks (the images it already has from the dataset's own upload)."""
        from app.annotate.document import annotated_dataset
        from engine.datasets.writers import export_dataset

        ds, store = self.window.dataset, self.controller.store
        if ds is None:
            raise DefectScopeError("no dataset is open")
        labelled = annotated_dataset(ds, store) if store is not None else ds
        tag = hashlib.sha256(str(ds.root.resolve()).encode()).hexdigest()[:12]
        out = default_data_home() / "segmenter_data" / f"{ds.root.name}-{tag}"
        export_dataset(labelled, out, "mvtec", copy_images=False, overwrite=True)
        return out

    def train_segmenter(self, on_submitted: Any = None) -> None:
        """Retrain DefectScope's promptable segmenter on this dataset's masks plus the ones drawn here."""
        w = self.window
        if w.dataset is None:
            w.show_error("Open a dataset with defect masks (or draw some in the Annotate dock) first.")
            return

        def submit(data: Path) -> None:
            w.link.submit("train_segmenter", {**self.segmenter_job_params, "data": str(data)},
                          on_done=on_submitted, on_finished=self._on_segmenter_trained,
                          on_error=lambda msg: w.show_error(f"Segmenter training could not start: {msg}"))
            w.status_message.emit("Training the segmenter in the engine (see Jobs); it loads when done."
                                  if w.link.is_local else "Sending the masks to the engine (see Jobs)…")

        w.status_message.emit("Collecting the defect masks for the segmenter…")
        w.background(self.segmenter_training_data, submit, lambda msg: w.show_error(f"Segmenter training data: {msg}"))

    def _on_segmenter_trained(self, job: JobView) -> None:
        w = self.window
        if job.state == "succeeded":
            w.link.fetch_artifact_dir(job, "segmenter", self.controller.load_segmenter,
                                      lambda msg: w.show_error(f"Cannot fetch the segmenter: {msg}"))
        elif job.state == "failed":
            w.show_error(f"Segmenter training failed: {job.error}")
