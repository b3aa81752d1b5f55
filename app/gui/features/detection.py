"""Box detection in the workbench: Model ▸ Detect defects (the active detector over the open dataset, through the
engine's detect_dataset job), the boxes on the image with class and score, a live score threshold, each box
against the labels (hit / wrong class / false alarm, missed labelled boxes dashed), accepting detections as
annotations (one, an image's, or the whole dataset's: auto-labelling), the detection metrics, and Model ▸ Train
detector on the labels drawn or accepted here.

Detections are read only through engine.detections; outcomes are counted only by engine.metrics.detection_match
(the rule the CLI's confusion matrix uses), so the workbench and `defectscope eval` agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QWidget

from app.annotate.document import AnnotationEditor, AnnotationError, AnnotationStore
from app.gui.detection_metrics import DetectionFigures, confusion_at, detection_figures
from app.gui.detection_panel import DetectionPanel
from app.gui.features.base import Feature, MenuEntry
from app.gui.image_view import OverlayBox
from engine.client import JobView
from engine.datasets.imageio import image_size
from engine.datasets.types import Sample
from engine.detections import DetectionItem, Detections, read_detections
from engine.errors import DefectScopeError
from engine.home import default_data_home
from engine.metrics.detection_match import FALSE_ALARM, HIT, WRONG_CLASS, ImageMatch, box_iou, match_image

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

DETECTOR_TASK = "detector"
DUPLICATE_IOU = 0.9  # an accepted box this close to an annotated box of its class is the same box
SYNC_COUNT_LIMIT = 2000  # images recounted on the GUI thread per threshold move; above, off the thread
TRAIN_FORMAT = "coco"  # keeps boxes (and polygons) and the split; MVTec layout would turn boxes into masks

HIT_COLOR = (40, 200, 60)
WRONG_CLASS_COLOR = (255, 150, 0)
FALSE_ALARM_COLOR = (235, 40, 40)
MISSED_COLOR = (230, 0, 230)
UNLABELLED_COLOR = (0, 200, 255)  # no labels to compare with
OUTCOMES = {HIT: ("hit", HIT_COLOR), WRONG_CLASS: ("wrong class", WRONG_CLASS_COLOR),
            FALSE_ALARM: ("false alarm", FALSE_ALARM_COLOR), None: ("no labels", UNLABELLED_COLOR)}


@dataclass(frozen=True)
class Counts:
    boxes: int = 0  # at or above the threshold
    hits: int = 0
    wrong_class: int = 0
    false_alarms: int = 0
    missed: int = 0
    unlabelled_boxes: int = 0  # boxes on images without labels: nothing to judge them by

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (self.boxes, self.hits, self.wrong_class, self.false_alarms, self.missed, self.unlabelled_boxes)

    def text(self) -> str:
        judged = (f"{self.hits} hit, {self.wrong_class} wrong class, {self.false_alarms} false alarm, "
                  f"{self.missed} missed")
        return f"{self.boxes} boxes: {judged}" + (f"; {self.unlabelled_boxes} on unlabelled images"
                                                  if self.unlabelled_boxes else "")


def match_item(item: DetectionItem, threshold: float) -> ImageMatch | None:
    """The item's boxes against its labels at `threshold`; None when the image has no labels."""
    if item.truth is None:
        return None
    return match_image(item.truth.boxes, item.truth.classes, item.boxes, item.scores, item.classes, threshold)


def kept_order(item: DetectionItem, threshold: float) -> np.ndarray:
    """Indices of the boxes at or above `threshold`, highest score first (match_image's order)."""
    kept = item.above(threshold)
    return kept[np.argsort(-item.scores[kept], kind="stable")]


def item_counts(item: DetectionItem, threshold: float) -> Counts:
    m = match_item(item, threshold)
    if m is None:
        return Counts(boxes=len(item.above(threshold)), unlabelled_boxes=len(item.above(threshold)))
    return Counts(len(m.kept), m.outcomes.count(HIT), m.outcomes.count(WRONG_CLASS), m.outcomes.count(FALSE_ALARM),
                  m.n_misses)


def dataset_counts(dets: Detections, threshold: float) -> Counts:
    total = Counts()
    for item in dets.items.values():
        total = total + item_counts(item, threshold)
    return total


def add_detected_boxes(editor: AnnotationEditor, boxes: np.ndarray, classes: list[str]) -> int:
    """Add boxes to an image's annotations as source "detector"; one already there (same class, IoU above
    DUPLICATE_IOU with an annotated box) is skipped, so accepting twice adds nothing. Returns how many were added."""
    have: list[tuple[np.ndarray, str]] = []
    for shape in editor.shapes:
        if shape.kind in ("box", "polygon") and shape.points:
            pts = np.asarray(shape.points, np.float64)
            have.append((np.concatenate([pts.min(axis=0), pts.max(axis=0)]), shape.class_name))
    added = 0
    for box, name in zip(np.asarray(boxes, np.float64).reshape(-1, 4), classes, strict=True):
        same = [b for b, c in have if c == name]
        if same and float(box_iou(box[None], np.stack(same)).max()) > DUPLICATE_IOU:
            continue
        try:
            editor.add_box(*(float(v) for v in box), name, source="detector")
        except AnnotationError:
            continue  # under a pixel wide: nothing an annotator could see
        have.append((box, name))
        added += 1
    return added


class DetectionFeature(Feature):
    detections_loaded = Signal(int)  # images with detections
    accepted = Signal(int)  # boxes added as annotations by the last accept

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        # What "Train detector" asks of the engine besides the data (the job kind's defaults otherwise).
        self.detector_job_params: dict[str, Any] = {}
        self.detections: Detections | None = None
        self.figures: DetectionFigures | None = None
        self.counts = Counts()  # the whole dataset at the current threshold
        self.image_counts = Counts()
        self._count_generation = 0
        self.panel = DetectionPanel()
        self.panel.threshold_changed.connect(self.set_threshold)
        self.panel.reset_button.clicked.connect(self._reset_threshold)
        self.panel.accept_selected_button.clicked.connect(self.accept_selected)
        self.panel.accept_image_button.clicked.connect(self.accept_image)
        self.panel.accept_dataset_button.clicked.connect(lambda: self.accept_dataset())
        window.browser.current_changed.connect(self._on_current_changed)
        window.dataset_loaded.connect(self._on_dataset)

    def dock_widget(self) -> QWidget:
        return self.panel

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Detect defects with the active detector", self.detect, "Ctrl+D"),
                MenuEntry("&Model", "Train &detector on the labels", lambda: self.train_detector())]

    @property
    def threshold(self) -> float:
        return self.panel.threshold()

    # ----------------------------------------------------------------- detecting
    def detect(self) -> None:
        w = self.window
        info, model_dir = w.models.model_info, w.models.model_dir
        if w.dataset is None or model_dir is None or info is None or info.task != DETECTOR_TASK:
            w.show_error("Open a dataset and make a detector the active model (Models panel, or Model ▸ Use "
                         "model folder with a detector or an external detector folder) first.")
            return
        # On a remote engine the link names a model it made by its ref and uploads any other folder.
        params = {"model": w.link.engine_path(model_dir, "model"), "data": str(w.dataset.root)}
        if w.category:
            params["category"] = w.category
        w.link.submit("detect_dataset", params, on_finished=self.on_detect_finished,
                      on_error=lambda msg: w.show_error(f"Detection could not start: {msg}"))
        w.status_message.emit("Detecting defects in the engine (see Jobs).")

    def on_detect_finished(self, job: JobView) -> None:
        w = self.window
        if job.state == "failed":
            w.show_error(f"Detection failed: {job.error}")
        if job.state != "succeeded":
            return
        # Detections on an uploaded dataset name the engine's copy: they are about the folder sent from here.
        source = w.link.local_source(job, "data")
        w.link.fetch_artifact_dir(job, "detections", lambda folder: self.load_detections(folder, source),
                                  lambda msg: w.show_error(f"Cannot fetch the detections: {msg}"))

    def load_detections(self, folder: Path, data_root: Path | None = None) -> None:
        """Show a detections folder (engine.detections); `data_root`: the local dataset they were made on when
        the engine searched an uploaded copy of it."""

        def load() -> Detections:
            dets = read_detections(Path(folder))
            return replace(dets, data=str(data_root)) if data_root is not None else dets

        self.window.background(load, self.show_detections, self.window.show_error)

    def show_detections(self, dets: Detections) -> None:
        w = self.window
        if w.dataset is None or not dets.is_for(w.dataset.root, w.category):
            w.status_message.emit(f"Detections in {dets.folder} are for {dets.data or 'other images'}, "
                                  f"not {w.dataset.root if w.dataset else 'the open dataset'}: not shown.")
            return
        self.detections = dets
        self.figures = None
        if dets.errors:
            w.show_banner(f"Detections: {len(dets.errors)} images could not be read, e.g. "
                          f"{next(iter(dets.errors.values()))}", "warning", tag="detections")
        else:
            w.hide_banner_if("detections")
        self.panel.set_threshold(dets.threshold)  # -> set_threshold: counts and boxes
        self._compute_figures(dets)
        self.panel.tabs.setCurrentIndex(0)
        dock = self.panel.parentWidget()
        if dock is not None:
            dock.raise_()
        w.status_message.emit(f"Detections on {len(dets.items)} images; {self.counts.text()}.")
        self.detections_loaded.emit(len(dets.items))

    def _on_dataset(self, _root: str) -> None:
        self.detections = None
        self.figures = None
        self.counts = self.image_counts = Counts()
        self.panel.set_rows([])
        self.panel.image_counts.setText("")
        self.panel.dataset_counts.setText("Model ▸ Detect defects runs the active detector on the open dataset.")
        self.panel.metrics.clear()
        self.window.image_view.set_boxes([])

    # ----------------------------------------------------------------- threshold, boxes and counts
    def _reset_threshold(self) -> None:
        if self.detections is not None:
            self.panel.set_threshold(self.detections.threshold)

    def set_threshold(self, value: float) -> None:
        """Redraw and recount at `value` without running the model again (every box was kept in the file)."""
        if abs(self.panel.threshold() - value) > 1e-9:
            self.panel.set_threshold(value)  # re-enters here through threshold_changed
            return
        dets = self.detections
        if dets is None:
            return
        self.show_boxes(self.window.shown_key)
        self._count_generation += 1
        generation = self._count_generation
        if len(dets.items) <= SYNC_COUNT_LIMIT:
            self._show_counts(generation, dataset_counts(dets, value))
        else:
            self.window.background(lambda: dataset_counts(dets, value),
                                   lambda counts: self._show_counts(generation, counts))
        self._update_confusion()

    def _show_counts(self, generation: int, counts: Counts) -> None:
        if generation != self._count_generation:
            return  # the threshold moved on meanwhile
        self.counts = counts
        self.panel.dataset_counts.setText(f"Dataset at score ≥ {self.threshold:.3f}: {counts.text()}")

    def _on_current_changed(self, key: str) -> None:
        self.show_boxes(key or None)

    def _judged(self, item: DetectionItem) -> tuple[ImageMatch | None, np.ndarray, list[str | None]]:
        """(the match or None without labels, the boxes at the threshold in score order, each one's outcome)."""
        m = match_item(item, self.threshold)
        if m is not None:
            return m, m.kept, list(m.outcomes)
        kept = kept_order(item, self.threshold)
        return None, kept, [None] * len(kept)

    def overlay_for(self, key: str) -> list[OverlayBox]:
        """What the image view draws for `key` at the current threshold: each box in its outcome's colour,
        labelled with class and score; each missed labelled box dashed."""
        item = self.detections.items.get(key) if self.detections is not None else None
        return self._overlay(item, *self._judged(item)) if item is not None else []

    @staticmethod
    def _overlay(item: DetectionItem, m: ImageMatch | None, kept: np.ndarray,
                 outcomes: list[str | None]) -> list[OverlayBox]:
        boxes = [OverlayBox(*map(float, item.boxes[i]), f"{item.classes[i]} {item.scores[i]:.2f}",
                            OUTCOMES[o][1]) for i, o in zip(kept, outcomes, strict=True)]
        if m is not None and item.truth is not None:
            boxes += [OverlayBox(*map(float, item.truth.boxes[t]), f"missed {item.truth.classes[t]}",
                                 MISSED_COLOR, dashed=True) for t in np.flatnonzero(~m.found)]
        return boxes

    def show_boxes(self, key: str | None) -> None:
        w = self.window
        item = self.detections.items.get(key) if (self.detections is not None and key) else None
        if item is None:
            w.image_view.set_boxes([])
            self.panel.set_rows([])
            self.image_counts = Counts()
            self.panel.image_counts.setText("No detections for this image." if self.detections else "")
            return
        m, kept, outcomes = self._judged(item)
        w.image_view.set_boxes(self._overlay(item, m, kept, outcomes))
        self.panel.set_rows([(item.classes[i], float(item.scores[i]), *OUTCOMES[o])
                             for i, o in zip(kept, outcomes, strict=True)])
        self.image_counts = item_counts(item, self.threshold)
        self.panel.image_counts.setText(f"This image at score ≥ {self.threshold:.3f}: {self.image_counts.text()}")

    # ----------------------------------------------------------------- metrics
    def _compute_figures(self, dets: Detections) -> None:
        view = self.panel.metrics
        view.set_scope("Computing detection metrics…")

        def show(figures: DetectionFigures) -> None:
            if self.detections is not dets:
                return  # replaced meanwhile
            self.figures = figures
            left_out = len(dets.items) - len(figures.keys)
            view.set_scope(f"Metrics on the {len(figures.keys)} labelled test-split images (as `defectscope eval`)"
                           + (f"; {left_out} training, unsplit or unlabelled images left out." if left_out else "."))
            view.set_metrics(figures.metrics)
            self._update_confusion()

        self.window.background(lambda: detection_figures(dets), show,
                               lambda msg: view.set_scope(f"Detection metrics: {msg}"))

    def _update_confusion(self) -> None:
        dets, figures, threshold = self.detections, self.figures, self.threshold
        if dets is None or figures is None:
            return

        def show(matrix: np.ndarray) -> None:
            if self.detections is dets and abs(self.threshold - threshold) < 1e-9:
                self.panel.metrics.set_confusion(figures.classes, matrix, threshold)

        self.window.background(lambda: confusion_at(dets, figures.keys, figures.classes, threshold), show)

    # ----------------------------------------------------------------- accepting as annotations
    def _accept_on_shown(self, rows: list[int] | None) -> int:
        """Add the shown image's boxes (those at `rows` of the table, or all at the threshold) through the
        Annotate dock's editor, so they appear in its overlay and undo there."""
        w = self.window
        key, controller = w.shown_key, w.annotation.controller
        if self.detections is None or key is None or key not in self.detections.items:
            w.show_error("No detections on this image: run Model ▸ Detect defects first.")
            return 0
        editor = controller.editor
        if editor is None or editor.ann.key != key:
            w.show_error("The image is still loading; try again in a moment.")
            return 0
        item = self.detections.items[key]
        idx = kept_order(item, self.threshold)  # the table's rows
        if rows is not None:
            idx = idx[[r for r in rows if r < len(idx)]]
        boxes, classes = item.boxes[idx], [item.classes[i] for i in idx]
        try:
            added = add_detected_boxes(editor, boxes, classes)
        except OSError as exc:
            w.show_error(f"Annotations NOT saved: {exc}")
            return 0
        controller.layer.set_shapes(editor.shapes)
        controller.changed.emit()
        self._accepted(added, len(classes))
        return added

    def accept_selected(self) -> int:
        rows = self.panel.selected_rows()
        if not rows:
            self.window.status_message.emit("Select a detection in the Detect dock first.")
            return 0
        return self._accept_on_shown(rows)

    def accept_image(self) -> int:
        return self._accept_on_shown(None)

    def accept_dataset(self, on_done: Callable[[int], None] | None = None) -> None:
        """Auto-labelling: every box at or above the threshold on every image becomes an annotation, written off
        the GUI thread; the shown image's annotations reload afterwards."""
        w = self.window
        dets, store = self.detections, w.annotation.controller.store
        if dets is None or store is None:
            w.show_error("Run Model ▸ Detect defects on the open dataset first.")
            return
        threshold = self.threshold
        samples = {k: w.samples[k] for k in dets.items if k in w.samples}
        offered = sum(len(dets.items[k].above(threshold)) for k in samples)

        def run() -> tuple[int, int]:
            return _accept_everywhere(store, dets, samples, threshold)

        def done(result: tuple[int, int]) -> None:
            added, images = result
            self._reload_shown_annotations()
            self._accepted(added, offered, images)
            if on_done is not None:
                on_done(added)

        w.status_message.emit(f"Adding {offered} detections at score ≥ {threshold:.3f} as annotations…")
        w.background(run, done, lambda msg: w.show_error(f"Accepting detections: {msg}"))

    def _reload_shown_annotations(self) -> None:
        w = self.window
        key, size = w.shown_key, w.image_view.image_size
        if key is not None and size is not None and key in w.samples:
            w.annotation.controller.show_image(key, w.samples[key].image_path, *size, w.samples[key])

    def _accepted(self, added: int, offered: int, images: int = 1) -> None:
        skipped = offered - added
        where = f" on {images} images" if images != 1 else ""
        self.window.status_message.emit(f"{added} detections added as annotations{where}"
                                        + (f"; {skipped} already annotated (or too small) skipped." if skipped else "."))
        self.accepted.emit(added)

    # ----------------------------------------------------------------- training a detector on the labels
    def detector_training_data(self) -> Path:
        """The open dataset with the boxes drawn or accepted here as its labels, written as COCO (boxes and the
        split survive) in the data home for a train_detector job. Runs off the GUI thread."""
        from app.annotate.document import annotated_dataset
        from engine.datasets.writers import export_dataset

        w = self.window
        ds, store = w.dataset, w.annotation.controller.store
        if ds is None:
            raise DefectScopeError("no dataset is open")
        labelled = annotated_dataset(ds, store) if store is not None else ds
        tag = hashlib.sha256(str(ds.root.resolve()).encode()).hexdigest()[:12]
        out = default_data_home() / "detector_data" / f"{ds.root.name}-{tag}"
        export_dataset(labelled, out, TRAIN_FORMAT, copy_images=False, overwrite=True)
        return out

    def train_detector(self, on_submitted: Callable[[str], None] | None = None) -> None:
        """Train DefectScope's detector on this dataset's boxes plus the ones drawn or accepted here; the model
        joins the Models panel and becomes the active one when the job succeeds."""
        w = self.window
        if w.dataset is None:
            w.show_error("Open a dataset with boxes (or draw some in the Annotate dock) first.")
            return

        def submit(data: Path) -> None:
            w.link.submit("train_detector", {**self.detector_job_params, "data": str(data)},
                          on_done=on_submitted, on_finished=self._on_detector_trained,
                          on_error=lambda msg: w.show_error(f"Detector training could not start: {msg}"))
            w.status_message.emit("Training a detector in the engine (see Jobs); it becomes the active model "
                                  "when done." if w.link.is_local else "Sending the labels to the engine (see Jobs)…")

        w.status_message.emit("Collecting the boxes for the detector…")
        w.background(self.detector_training_data, submit, lambda msg: w.show_error(f"Detector training data: {msg}"))

    def _on_detector_trained(self, job: JobView) -> None:
        w = self.window
        if job.state == "succeeded":
            w.link.fetch_model(job, w.models.set_model, lambda msg: w.show_error(f"Cannot fetch the detector: {msg}"))
        elif job.state == "failed":
            w.show_error(f"Detector training failed: {job.error}")


def _accept_everywhere(store: AnnotationStore, dets: Detections, samples: dict[str, Sample],
                       threshold: float) -> tuple[int, int]:
    """(boxes added, images given boxes) over every image of `samples`; off the GUI thread. An image never
    annotated starts from its own labels (AnnotationStore.load), so they stay in its exports."""
    added = images = 0
    for key, sample in samples.items():
        item = dets.items[key]
        idx = kept_order(item, threshold)
        if not len(idx):
            continue
        width, height = image_size(sample.image_path)
        n = add_detected_boxes(AnnotationEditor(store, store.load(key, width, height, sample)), item.boxes[idx],
                               [item.classes[i] for i in idx])
        added += n
        images += n > 0
    return added, images
