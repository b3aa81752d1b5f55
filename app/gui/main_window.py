"""The workbench's main window: browser | image view | review panel, with jobs, models and metrics docked below.

Everything slow happens elsewhere: datasets load and masks decode on the task pool, thumbnails and images on
their own pools, scoring and training in the engine (reached only through EngineLink). The GUI thread only
moves small results into widgets.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QByteArray, QSettings, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.annotation_tools import AnnotationController, AnnotationPanel
from app.gui.browser import BrowserWidget
from app.gui.engine_link import EngineLink, EngineSettings, load_settings, save_settings
from app.gui.image_view import ImageView
from app.gui.job_dialog import EngineSettingsDialog, EvalDialog, TrainDialog
from app.gui.jobs_panel import JobsPanel
from app.gui.metrics_view import MetricsView
from app.gui.models_panel import ModelsPanel
from app.gui.predictions import Predictions
from app.gui.review_panel import ReviewPanel
from app.gui.tasks import run_in_background, wait_for_background
from app.gui.unified_dialog import UnifiedDialog, unified_runs
from app.keys import sample_key
from app.review.store import ReviewStore, ReviewStoreError, store_for_dataset
from app.review.threshold import ScoreSet
from engine.datasets import load_dataset
from engine.datasets.demo import default_data_home, ensure_demo_dataset
from engine.datasets.imageio import read_mask
from engine.datasets.types import Dataset, Sample
from engine.errors import DefectScopeError

DEMO_CATEGORY = "washer"
MAX_PRO_IMAGES = 2000  # maps and masks held in memory for the PRO curve (256 px each: ~260 MB at most)
BANNER_STYLE = {
    "error": "background:#c62828; color:white; padding:6px; font-weight:bold;",
    "info": "background:#1565c0; color:white; padding:6px;",
    "warning": "background:#ef8f00; color:black; padding:6px;",
}
ENGINE_COLOURS = {"connected": "#2e7d32", "starting": "#ef8f00", "stopped": "#757575",
                  "unreachable": "#c62828", "unauthorized": "#c62828"}


class MainWindow(QMainWindow):
    dataset_loaded = Signal(str)  # root
    predictions_loaded = Signal(int)  # images scored
    status_message = Signal(str)

    def __init__(self, link: EngineLink | None = None) -> None:
        super().__init__()
        self.setWindowTitle("DefectScope")
        self.resize(1500, 950)
        self._closed = False
        self.link = link if link is not None else EngineLink(self)
        self.dataset: Dataset | None = None
        self.category: str | None = None
        self.samples: dict[str, Sample] = {}
        self.store: ReviewStore | None = None
        self.predictions: Predictions | None = None
        self.score_set: ScoreSet | None = None
        self.model_dir: Path | None = None
        self.model_threshold = 0.5
        self._pending_score_jobs: set[str] = set()
        self._pending_propose_jobs: set[str] = set()
        self._pending_segmenter_jobs: set[str] = set()
        self._pending_unified_jobs: set[str] = set()
        # What "Train segmenter" asks of the engine besides the data (the job kind's defaults otherwise).
        self.segmenter_job_params: dict[str, Any] = {"synthetic_images": 300}
        self._shown_key: str | None = None

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.browser = BrowserWidget()
        self.image_view = ImageView()
        self.review = ReviewPanel()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.browser)
        splitter.addWidget(self.image_view)
        splitter.addWidget(self.review)
        splitter.setSizes([430, 800, 300])
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)

        self.jobs_panel = JobsPanel(self.link)
        self.models_panel = ModelsPanel(self.link)
        self.metrics_view = MetricsView()
        self.annotation_panel = AnnotationPanel()
        docks = [self._dock("Jobs", self.jobs_panel), self._dock("Models", self.models_panel),
                 self._dock("Metrics", self.metrics_view), self._dock("Annotate", self.annotation_panel)]
        for d in docks:
            self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, d)
        self.tabifyDockWidget(docks[0], docks[1])
        self.tabifyDockWidget(docks[1], docks[2])
        self.tabifyDockWidget(docks[2], docks[3])
        docks[0].raise_()
        self.resizeDocks([docks[0]], [260], Qt.Orientation.Vertical)

        self.engine_label = QLabel()
        self.model_label = QLabel("no model")
        self.statusBar().addPermanentWidget(self.model_label)
        self.statusBar().addPermanentWidget(self.engine_label)
        self.status_message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self._build_menus()
        self._build_shortcuts()
        self.annotations = AnnotationController(self.image_view, self.annotation_panel, self)
        self.annotation_panel.find_edit.returnPressed.connect(
            lambda: self.find_defects(self.annotation_panel.find_edit.text()))
        self._text_export_job: str | None = None
        self._pending_query: str | None = None
        self.text_matches: list[tuple[str, float]] = []
        self.image_view.image_shown.connect(self._on_image_shown)
        # The 3D dock is made on the first part that has a point cloud (OpenGL is not set up for 2D-only work).
        self.cloud_view: Any = None
        self._cloud_key: str | None = None
        self._pixel_marker: Any = None

        self.browser.current_changed.connect(self._on_current_changed)
        self.review.verdict_requested.connect(self.set_verdict)
        self.review.note_changed.connect(self._on_note)
        self.review.threshold_changed.connect(self.set_threshold)
        self.metrics_view.threshold_changed.connect(self.set_threshold)
        self.image_view.load_failed.connect(lambda _k, reason: self.status_message.emit(reason))
        self.link.status_changed.connect(self._on_engine_status)
        self.link.job_finished.connect(self._on_job_finished)
        self.models_panel.model_activated.connect(self.set_model)
        self.review.set_threshold(self.model_threshold)
        self._on_engine_status(self.link.state, "")
        geometry = self._settings().value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)

    # ----------------------------------------------------------------- construction
    def _dock(self, title: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        return dock

    @staticmethod
    def _settings() -> QSettings:
        return QSettings(str(default_data_home() / "gui.ini"), QSettings.Format.IniFormat)

    def _action(self, menu, text: str, slot, shortcut: str | None = None) -> QAction:
        act = QAction(text, self)
        if shortcut:
            act.setShortcut(QKeySequence(shortcut))
        act.triggered.connect(slot)
        menu.addAction(act)
        return act

    def _build_menus(self) -> None:
        bar = self.menuBar()
        f = bar.addMenu("&File")
        self._action(f, "&Open dataset folder…", self.choose_dataset, "Ctrl+O")
        self._action(f, "Open &demo dataset", self.open_demo)
        f.addSeparator()
        self._action(f, "&Export decisions as CSV…", self.choose_export_csv, "Ctrl+E")
        self._action(f, "Save &screenshot…", self.choose_screenshot)
        f.addSeparator()
        self._action(f, "&Quit", self.close, "Ctrl+Q")
        m = bar.addMenu("&Model")
        self._action(m, "&Score dataset with the active model", self.score_dataset, "Ctrl+R")
        self._action(m, "Use model &folder…", self.choose_model)
        self._action(m, "&Propose defect masks from the anomaly maps", self.propose_masks)
        self._action(m, "Train &segmenter on the defect masks", self.train_segmenter)
        m.addSeparator()
        self._action(m, "&Train…", self.open_train_dialog, "Ctrl+T")
        self._action(m, "Train a &unified model, or add products to one…", self.open_unified_dialog)
        self._action(m, "&Evaluate…", self.open_eval_dialog)
        e = bar.addMenu("&Engine")
        self._action(e, "Engine &settings…", self.open_engine_settings)
        self._action(e, "&Reconnect", lambda: self.link.start(load_settings()))

    def _build_shortcuts(self) -> None:
        # Window-wide keys; text fields swallow their own keys first (Qt's ShortcutOverride), so typing a note
        # containing "o" or "n" never sets a verdict.
        keys = {"O": "ok", "1": "ok", "N": "ng", "2": "ng", "U": "unsure", "3": "unsure", "Backspace": None}
        for key, verdict in keys.items():
            QShortcut(QKeySequence(key), self, activated=lambda v=verdict: self.set_verdict(v))
        for key in ("Right", "Down", "Space", "J"):
            QShortcut(QKeySequence(key), self, activated=self.next_image)
        for key in ("Left", "Up", "K"):
            QShortcut(QKeySequence(key), self, activated=self.previous_image)
        QShortcut(QKeySequence("F"), self, activated=self.image_view.fit)
        QShortcut(QKeySequence("H"), self, activated=lambda: self.image_view.set_overlay_visible(
            "heatmap", not self.image_view.is_overlay_visible("heatmap")))

    def _background(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
                    on_error: Callable[[str], None] | None = None) -> None:
        """Off the GUI thread; the callbacks are dropped once the window has closed."""
        run_in_background(fn, on_done, on_error, guard=lambda: not self._closed and shiboken6.isValid(self),
                          lane="disk")

    # ----------------------------------------------------------------- datasets
    def choose_dataset(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open dataset folder")
        if folder:
            self.open_dataset(Path(folder))

    def open_demo(self) -> None:
        self.status_message.emit("Preparing the demo dataset…")
        self._background(ensure_demo_dataset, lambda root: self.open_dataset(Path(root) / DEMO_CATEGORY),
                       self.show_error)

    def open_dataset(self, root: Path, category: str | None = None) -> None:
        """Load off the GUI thread (headers only); the browser fills when it is done."""
        root = Path(root)
        self.status_message.emit(f"Opening {root}…")
        started = time.perf_counter()

        def load() -> tuple[Dataset, dict[str, Sample]]:
            ds = load_dataset(root, category=category)
            # Keys resolve every path: at 10k images on a network share that is seconds, so not on the GUI thread.
            return ds, {sample_key(ds.root, s): s for s in ds.samples}

        self._background(load, lambda result: self._on_dataset(*result, time.perf_counter() - started, category),
                       lambda msg: self.show_error(f"Cannot open {root}: {msg}"))

    def _on_dataset(self, ds: Dataset, samples: dict[str, Sample], seconds: float, category: str | None) -> None:
        self.review.flush_note()
        try:
            store = ReviewStore(store_for_dataset(ds.root))
        except ReviewStoreError as exc:
            self.show_error(str(exc))
            return
        if self.store is not None:
            self.store.close()
        self.store = store
        self.dataset = ds
        self.category = category
        self.samples = samples
        self.predictions = None
        self.score_set = None
        self._shown_key = None
        self.browser.set_dataset(ds.root, ds.samples, ds.issues)
        defects = sorted({s.defect_type for s in ds.samples if s.defect_type and s.defect_type != "good"})
        self.annotations.set_dataset(ds.root, sorted(set(ds.class_names) | set(defects)))
        self.browser.model.set_verdicts({k: d.verdict for k, d in store.latest().items()})
        self.metrics_view.set_results({}, {}, {})
        self.review.show_impact(None)
        self.setWindowTitle(f"DefectScope — {ds.root}")
        issues = f", {len(ds.issues)} files with problems (marked !)" if ds.issues else ""
        self.status_message.emit(f"{len(ds.samples)} images ({ds.format}) in {seconds:.1f} s{issues}")
        self.hide_banner_if("dataset")
        if self.browser.visible_keys():
            self.browser.select_key(self.browser.visible_keys()[0])
        self.dataset_loaded.emit(str(ds.root))
        self._maybe_load_predictions_for_model()

    # ----------------------------------------------------------------- navigation and review
    def next_image(self) -> None:
        self.browser.select_next()

    def previous_image(self) -> None:
        self.browser.select_previous()

    def current_key(self) -> str | None:
        return self.browser.current_key()

    def _on_current_changed(self, key: str) -> None:
        self.review.flush_note()
        self._shown_key = key or None
        row = self.browser.model.row_for_key(key) if key else -1
        if row < 0:
            self.image_view.clear()
            return
        # Rows for files the reader could not take (corrupt images) are not dataset samples but still open, so
        # the view can say what is wrong with them.
        sample = self.samples.get(key) or self.browser.model.sample_at(row)
        self.image_view.load(sample.image_path, key)
        self.image_view.set_annotations(sample.boxes, sample.polygons, self.dataset.class_names if self.dataset else ())
        self._show_heatmap(key)
        truth = sample.label + (f" ({sample.defect_type})" if sample.defect_type and sample.label != "good" else "")
        score = self.predictions.scores.get(key) if self.predictions else None
        self.review.show_image(key, f"{truth}, {sample.split}", score, self.review.threshold())
        self._show_decision(key)
        if sample.mask_path is not None:
            path = sample.mask_path

            def decode() -> np.ndarray | None:
                # Holding an arrow key queues one decode per image passed: skip those already left behind.
                return read_mask(path) if self._shown_key == key else None

            self._background(decode, lambda m, k=key: self._on_mask(k, m),
                           lambda msg: self.status_message.emit(f"mask: {msg}"))
        else:
            self.image_view.set_mask(None)

    def _on_image_shown(self, key: str) -> None:
        """Annotation needs the image's real size; the next images are encoded for the segmenter meanwhile."""
        size = self.image_view.image_size
        sample = self.samples.get(key)
        if size is None or sample is None or key != self._shown_key:
            return
        self.annotations.show_image(key, sample.image_path, *size)
        self._show_cloud(key, sample)
        visible = self.browser.visible_keys()
        if key in visible:
            i = visible.index(key)
            self.annotations.prefetch([self.samples[k].image_path for k in visible[i + 1:i + 3] if k in self.samples])

    # ----------------------------------------------------------------- 3D
    def _ensure_cloud_view(self) -> Any:
        if self.cloud_view is None:
            import pyqtgraph as pg

            from app.gui.cloud_view import CloudView

            self.cloud_view = CloudView()
            dock = self._dock("3D", self.cloud_view)
            self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            self.cloud_view.pixel_selected.connect(self._on_cloud_pixel)
            self._pixel_marker = pg.ScatterPlotItem(size=14, pen=pg.mkPen("r", width=2), brush=None)
            self.image_view.view_box.addItem(self._pixel_marker)
            self.image_view.view_box.scene().sigMouseClicked.connect(self._on_image_click)
        return self.cloud_view

    def _show_cloud(self, key: str, sample: Sample) -> None:
        from engine.datasets.pointcloud import cloud_path

        xyz_path = cloud_path(sample.extra)
        if xyz_path is None:
            if self.cloud_view is not None:
                self.cloud_view.set_cloud(None)
            return
        view = self._ensure_cloud_view()
        amap = self.predictions.anomaly_map(key) if self.predictions else None

        def load() -> tuple[np.ndarray, np.ndarray]:
            from engine.datasets.imageio import read_image
            from engine.datasets.pointcloud import read_cloud

            return read_cloud(xyz_path), read_image(sample.image_path)

        def show(result: tuple[np.ndarray, np.ndarray]) -> None:
            if key == self._shown_key:
                self._cloud_key = key
                view.set_cloud(result[0], result[1], amap)
                if self._pixel_marker is not None:
                    self._pixel_marker.clear()

        self._background(load, show, lambda msg: (view.set_cloud(None), self.status_message.emit(msg)))

    def _cloud_scale(self) -> tuple[float, float] | None:
        """(rows, cols) of the cloud grid per image pixel; None without a cloud or an image."""
        size = self.image_view.image_size
        if self.cloud_view is None or self.cloud_view.xyz is None or size is None:
            return None
        h, w = self.cloud_view.xyz.shape[:2]
        return h / size[1], w / size[0]

    def _on_image_click(self, ev: Any) -> None:
        """A click on the image (with the pan tool) highlights the part's 3D point under it."""
        scale = self._cloud_scale()
        if scale is None or self.annotations.layer.tool != "pan" or self._cloud_key != self._shown_key:
            return
        p = self.image_view.view_box.mapSceneToView(ev.scenePos())
        self.select_image_pixel(int(p.y()), int(p.x()))

    def select_image_pixel(self, row: int, col: int) -> bool:
        """Highlight image pixel (row, col) in the image and its 3D point; False when it has no 3D point."""
        scale = self._cloud_scale()
        if scale is None:
            return False
        ok = self.cloud_view.select_pixel(int(row * scale[0]), int(col * scale[1]))
        self._pixel_marker.setData([col + 0.5], [row + 0.5])
        if not ok:
            self.status_message.emit(f"Pixel ({col}, {row}) has no measured 3D point.")
        return ok

    def _on_cloud_pixel(self, row: int, col: int) -> None:
        scale = self._cloud_scale()
        if scale is None:
            return
        r, c = (row + 0.5) / scale[0], (col + 0.5) / scale[1]
        self._pixel_marker.setData([c], [r])
        x, y, z = (float(v) for v in self.cloud_view.xyz[row, col])
        self.status_message.emit(f"Pixel ({int(c)}, {int(r)}): x {x:.2f}, y {y:.2f}, z {z:.2f}")

    def _on_mask(self, key: str, mask: np.ndarray | None) -> None:
        if mask is not None and key == self._shown_key:  # the user may have moved on while it decoded
            self.image_view.set_mask(mask)

    def _show_heatmap(self, key: str) -> None:
        amap = self.predictions.anomaly_map(key) if self.predictions else None
        self.image_view.set_heatmap(amap)
        if self.cloud_view is not None and self._cloud_key == key:
            self.cloud_view.set_anomaly(amap)
        self.image_view.set_threshold(self.review.threshold())

    def _show_decision(self, key: str) -> None:
        if self.store is None:
            return
        history = self.store.history(key)
        self.review.show_decision(history[-1] if history else None, history)

    def set_verdict(self, verdict: str | None) -> None:
        key = self.current_key()
        if key is None or self.store is None:
            return
        self.review.flush_note()
        # Decide where to go before the model changes: under a verdict filter (e.g. "unreviewed") the decided
        # row leaves the view and Qt moves the current row on by itself.
        visible = self.browser.visible_keys()
        pos = visible.index(key) if key in visible else -1
        following = visible[pos + 1] if 0 <= pos < len(visible) - 1 else None
        score = self.predictions.scores.get(key) if self.predictions else None
        try:
            self.store.set_verdict(key, verdict, score=score,
                                   threshold=self.review.threshold() if score is not None else None)
        except (sqlite3.Error, OSError) as exc:
            self.show_error(f"The decision for {key} was NOT saved: {exc}")
            return
        self.browser.model.set_verdict(key, verdict)
        advance = verdict is not None and self.review.advance_check.isChecked()
        if advance and following is not None:
            self.browser.select_key(following)
        elif not advance and self.current_key() != key:
            self.browser.select_key(key)  # hidden by the filter: nothing to show; otherwise stay on it
        if self.current_key() == key:
            self._show_decision(key)

    def _on_note(self, text: str) -> None:
        key = self._shown_key
        if key is None or self.store is None:
            return
        try:
            self.store.set_note(key, text)
        except (sqlite3.Error, OSError) as exc:
            self.show_error(f"The note for {key} was NOT saved: {exc}")
            return
        # Only the history: re-setting the note text would move the cursor of someone still typing.
        history = self.store.history(key)
        self.review.show_history(history)

    def choose_export_csv(self) -> None:
        if self.store is None:
            self.show_error("Open a dataset first: decisions belong to a dataset.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export decisions", "decisions.csv", "CSV (*.csv)")
        if path:
            try:
                n = self.store.export_csv(Path(path))
            except OSError as exc:
                self.show_error(f"Cannot write {path}: {exc.strerror or exc}")
                return
            self.status_message.emit(f"{n} decisions written to {path}")

    # ----------------------------------------------------------------- threshold and metrics
    def set_threshold(self, value: float) -> None:
        self.review.set_threshold(value)
        self.metrics_view.set_threshold(value)
        self.image_view.set_threshold(value)
        key = self._shown_key
        if key is not None and self.predictions is not None:
            self.review.show_score(self.predictions.scores.get(key), value)
        self.review.show_impact(self.score_set.impact(value, self.model_threshold) if self.score_set else None)

    # ----------------------------------------------------------------- models and predictions
    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with model.onnx and model.json)")
        if folder:
            self.models_panel.add_model_dir(Path(folder))
            self.set_model(Path(folder))

    def set_model(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "model.onnx").is_file() and not (model_dir / "multimodal.json").is_file():
            self.show_error(f"{model_dir}: not a DefectScope model (no model.onnx or multimodal.json)")
            return
        self.model_dir = model_dir
        self.model_label.setText(f"model: {model_dir.parent.name}/{model_dir.name}")
        self.status_message.emit(f"Active model {model_dir}. Model ▸ Score dataset (Ctrl+R) runs it on every image.")
        self._maybe_load_predictions_for_model()

    def _maybe_load_predictions_for_model(self) -> None:
        """Predictions this model already made for this dataset (a finished score job) come back at once."""
        if self.model_dir is None or self.dataset is None:
            return
        folder = _predictions_cache(self.model_dir, self.dataset.root)
        if (folder / "scores.json").is_file():
            self.load_predictions(folder)

    def score_dataset(self) -> None:
        if self.dataset is None or self.model_dir is None:
            self.show_error("Open a dataset and choose a model (Models panel or Model ▸ Use model folder) first.")
            return
        params = {"model": str(self.model_dir), "data": str(self.dataset.root)}
        if self.category:
            params["category"] = self.category
        self.link.submit("score_dataset", params, on_done=self._pending_score_jobs.add,
                         on_error=lambda msg: self.show_error(f"Scoring could not start: {msg}"))
        self.status_message.emit("Scoring submitted to the engine (see Jobs).")

    # ----------------------------------------------------------------- text prompts
    def find_defects(self, query: str) -> None:
        """Match a typed description to the dataset's defect classes (sentence embeddings, ONNX, no torch); the
        best match becomes the annotation class and the browser shows that defect type."""
        if self.dataset is None or not query.strip():
            return
        folder = Path(str(self._settings().value("text/encoder_dir", "") or "/nonexistent"))
        if not (folder / "text_encoder.onnx").is_file():
            self._pending_query = query
            if self._text_export_job is None:
                self._text_export_job = "submitting"
                self.link.submit("export_text_encoder", {}, on_done=self._on_text_job_submitted,
                                 on_error=lambda m: self.show_error(f"Text prompts need the engine: {m}"))
                self.annotation_panel.status.setText("Preparing the text model in the engine (once)…")
            return
        names = sorted({s.defect_type for s in self.dataset.samples if s.defect_type and s.defect_type != "good"}
                       | set(self.dataset.class_names) | {self.annotation_panel.class_combo.itemText(i)
                                                          for i in range(self.annotation_panel.class_combo.count())})

        def match() -> list[tuple[str, float]]:
            from engine.runtime.text import TextEncoder

            return TextEncoder(folder).match(query, sorted(n for n in names if n))

        self._background(match, lambda ranked: self._on_text_matches(query, ranked),
                         lambda msg: self.show_error(f"Text prompt: {msg}"))

    def _on_text_job_submitted(self, job_id: str) -> None:
        self._text_export_job = job_id

    def _on_text_matches(self, query: str, ranked: list[tuple[str, float]]) -> None:
        self.text_matches = ranked
        if not ranked:
            self.annotation_panel.status.setText(f"No defect classes to match \"{query}\" against.")
            return
        best = ranked[0][0]
        self.annotation_panel.class_combo.setCurrentText(best)
        shown = ", ".join(f"{n} {s:.2f}" for n, s in ranked[:3])
        types = {s.defect_type for s in self.dataset.samples} if self.dataset else set()
        if best in types:
            combo = self.browser.defect_combo
            i = combo.findData(best)
            if i >= 0:
                combo.setCurrentIndex(i)
        self.annotation_panel.status.setText(f"\"{query}\" matches {shown}: class set to {best}"
                                             + (", browser shows that defect type." if best in types else "."))

    def propose_masks(self) -> None:
        """Batch auto-prompts: the engine turns each image's anomaly blobs into segmenter proposals."""
        seg = self.annotations.segmenter_dir
        if self.dataset is None or self.model_dir is None or seg is None:
            self.show_error("Needs an open dataset, an anomaly model (Models panel) and a segmenter model "
                            "(Annotate ▸ Segmenter model…).")
            return
        params = {"model": str(self.model_dir), "segmenter": str(seg), "data": str(self.dataset.root)}
        if self.category:
            params["category"] = self.category
        self.link.submit("propose_masks", params, on_done=self._pending_propose_jobs.add,
                         on_error=lambda msg: self.show_error(f"Proposals could not start: {msg}"))
        self.status_message.emit("Proposing masks in the engine (see Jobs).")

    def segmenter_training_data(self) -> Path:
        """The open dataset with the engineer's drawn annotations as its labels, written as an MVTec layout
        (images linked, masks rasterised) for a train_segmenter job. Runs off the GUI thread."""
        import hashlib

        from app.annotate.document import annotated_dataset
        from engine.datasets.writers import export_dataset

        ds, store = self.dataset, self.annotations.store
        if ds is None:
            raise DefectScopeError("no dataset is open")
        labelled = annotated_dataset(ds, store) if store is not None else ds
        tag = hashlib.sha256(str(ds.root.resolve()).encode()).hexdigest()[:12]
        out = default_data_home() / "segmenter_data" / f"{ds.root.name}-{tag}"
        export_dataset(labelled, out, "mvtec", copy_images=False, overwrite=True)
        return out

    def train_segmenter(self) -> None:
        """Retrain DefectScope's promptable segmenter on this dataset's masks plus the ones drawn here."""
        if self.dataset is None:
            self.show_error("Open a dataset with defect masks (or draw some in the Annotate dock) first.")
            return
        if not self.link.is_local:
            # The export lives on this computer; a remote engine would not see it.
            self.show_error("Training the segmenter on drawn masks needs the local engine (Engine ▸ Settings); "
                            "on a remote engine, submit train_segmenter with a dataset path on that server.")
            return

        def submit(data: Path) -> None:
            self.link.submit("train_segmenter", {**self.segmenter_job_params, "data": str(data)},
                             on_done=self._pending_segmenter_jobs.add,
                             on_error=lambda msg: self.show_error(f"Segmenter training could not start: {msg}"))
            self.status_message.emit("Training the segmenter in the engine (see Jobs); it loads when done.")

        self.status_message.emit("Collecting the defect masks for the segmenter…")
        self._background(self.segmenter_training_data, submit,
                         lambda msg: self.show_error(f"Segmenter training data: {msg}"))

    def _on_proposals(self, folder: Path) -> None:
        import json

        def load() -> dict:
            return json.loads((Path(folder) / "proposals.json").read_text())

        def show(summary: dict) -> None:
            if self.dataset is None or Path(summary.get("data", "")).resolve() != self.dataset.root.resolve():
                self.status_message.emit("Proposals are for another dataset: not shown.")
                return
            n = self.annotations.set_pending(summary.get("items", {}))
            self.findChild(QDockWidget, "Annotate").raise_()
            self.status_message.emit(f"{n} proposed masks on {len(summary.get('items', {}))} images: "
                                     "Enter keeps, Del rejects.")

        self._background(load, show, lambda msg: self.show_error(f"Cannot read the proposals: {msg}"))

    def _on_job_finished(self, job: dict) -> None:
        if job.get("id") == self._text_export_job:
            self._text_export_job = None
            if job.get("state") == "succeeded":
                def ready(folder: Path) -> None:
                    self._settings().setValue("text/encoder_dir", str(folder))
                    if self._pending_query:
                        self.find_defects(self._pending_query)

                self.link.fetch_artifact_dir(job, "text_encoder", ready,
                                             lambda m: self.show_error(f"Cannot fetch the text model: {m}"))
            else:
                self.show_error(f"Preparing the text model failed: {job.get('error')}")
            return
        if job.get("id") in self._pending_propose_jobs:
            self._pending_propose_jobs.discard(job["id"])
            if job.get("state") == "succeeded":
                self.link.fetch_artifact_dir(job, "proposals", self._on_proposals,
                                             lambda msg: self.show_error(f"Cannot fetch the proposals: {msg}"))
            elif job.get("state") == "failed":
                self.show_error(f"Proposing masks failed: {job.get('error')}")
            return
        if job.get("id") in self._pending_segmenter_jobs:
            self._pending_segmenter_jobs.discard(job["id"])
            if job.get("state") == "succeeded":
                self.link.fetch_artifact_dir(job, "segmenter", self.annotations.load_segmenter,
                                             lambda msg: self.show_error(f"Cannot fetch the segmenter: {msg}"))
            elif job.get("state") == "failed":
                self.show_error(f"Segmenter training failed: {job.get('error')}")
            return
        if job.get("id") in self._pending_score_jobs:
            self._pending_score_jobs.discard(job["id"])
            notes = (job.get("result") or {}).get("notes") or []
            if job.get("state") == "succeeded" and notes:
                self.show_banner("Scores: " + " ".join(notes), "warning", tag="scores")
            elif job.get("state") == "succeeded":
                self.hide_banner_if("scores")
            if job.get("state") == "succeeded":
                self.link.fetch_artifact_dir(job, "predictions", self.load_predictions,
                                             lambda msg: self.show_error(f"Cannot fetch the scores: {msg}"))
            elif job.get("state") == "failed":
                self.show_error(f"Scoring failed: {job.get('error')}")
        elif job.get("id") in self._pending_unified_jobs:
            self._pending_unified_jobs.discard(job["id"])
            if job.get("state") == "succeeded":
                products = ", ".join((job.get("result") or {}).get("products") or [])
                self.status_message.emit(f"The unified model now covers {products}: it is in the Models panel.")
            elif job.get("state") == "failed":
                self.show_error(f"Unified model training failed: {job.get('error')}")
        elif job.get("kind") == "train_anomaly" and job.get("state") == "succeeded":
            self.status_message.emit("Training finished: the model is in the Models panel.")

    def load_predictions(self, folder: Path) -> None:
        self._background(lambda: Predictions.load(Path(folder)), self._on_predictions,
                       lambda msg: self.show_error(msg))

    def _on_predictions(self, preds: Predictions) -> None:
        if self.dataset is None:
            return
        scores = {k: v for k, v in preds.scores.items() if k in self.samples}
        if not preds.is_for(self.dataset.root, self.category) or not scores:
            # e.g. a scoring job that finished after another dataset was opened
            self.status_message.emit(f"Scores in {preds.folder} are for {preds.data or 'another dataset'}, "
                                     f"not {self.dataset.root}: not shown.")
            return
        self.predictions = preds
        if self.model_dir is not None:
            _remember_predictions(self.model_dir, self.dataset.root, preds.folder)
        self.model_threshold = preds.threshold
        labels = {k: self.samples[k].label for k in scores}
        defect_types = {k: self.samples[k].defect_type for k in scores}
        self.score_set = ScoreSet(scores, labels, defect_types)
        self.browser.model.set_scores(scores)
        self.browser.set_sort_mode("score")
        self.metrics_view.set_results(scores, labels, defect_types)
        self.metrics_view.set_reference_threshold(preds.threshold)
        self._load_pixel_maps(preds, scores, labels, defect_types)
        values = list(scores.values())
        self.review.set_range(float(np.floor(min(values) * 10) / 10), float(np.ceil(max(values) * 10) / 10))
        self.set_threshold(preds.threshold)
        if self._shown_key:
            self._show_heatmap(self._shown_key)
            self.review.show_score(scores.get(self._shown_key), self.review.threshold())
        self.status_message.emit(f"{len(scores)} images scored; sorted by score, highest first.")
        self.predictions_loaded.emit(len(scores))

    def _load_pixel_maps(self, preds: Predictions, scores: dict, labels: dict, defect_types: dict) -> None:
        """Maps and masks for the PRO curve, read off the GUI thread at the maps' own (display) resolution."""
        with_masks = [k for k in scores if self.samples[k].mask_path is not None or labels[k] == "good"]
        if not any(self.samples[k].mask_path is not None for k in with_masks):
            return
        keys = with_masks[:MAX_PRO_IMAGES]
        samples = self.samples

        def load() -> tuple[dict, dict]:
            import cv2

            maps, masks = {}, {}
            for k in keys:
                amap = preds.anomaly_map(k)
                if amap is None:
                    continue
                path = samples[k].mask_path
                if path is None:
                    mask = np.zeros(amap.shape, bool)
                else:
                    try:
                        full = read_mask(path)
                    except DefectScopeError:
                        continue  # a broken mask leaves its image out of PRO; the browser already flags it
                    mask = cv2.resize(full.astype(np.uint8), amap.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
                maps[k], masks[k] = amap, mask
            return maps, masks

        def show(result: tuple[dict, dict]) -> None:
            if self.predictions is preds:  # not replaced meanwhile
                self.metrics_view.set_results(scores, labels, defect_types, *result)

        self._background(load, show, lambda msg: self.status_message.emit(f"PRO curve: {msg}"))

    # ----------------------------------------------------------------- jobs
    def open_train_dialog(self) -> None:
        root = self.dataset.root if self.dataset else None
        # A remote engine's paths are its own: they cannot be checked on this computer.
        dialog = TrainDialog(root, self.dataset.categories if self.dataset else [], self,
                             check_paths=self.link.is_local)
        if dialog.exec():
            self.link.submit("train_anomaly", dialog.params(), on_error=lambda m: self.show_error(f"Training: {m}"))

    def unified_dialog(self) -> UnifiedDialog:
        """The unified-model dialog, with the open dataset's categories and the unified models the engine trained
        (the active one preselected, else the newest: adding a product is the usual next step)."""
        runs = unified_runs(self.link.jobs)
        active = next((r for r in runs if self.model_dir is not None and self.link.is_local
                       and Path(r.engine_path).resolve() == self.model_dir.resolve()), None)
        return UnifiedDialog(self.dataset.root if self.dataset else None,
                             self.dataset.categories if self.dataset else [], runs, self,
                             check_paths=self.link.is_local, add_to=active or (runs[0] if runs else None))

    def open_unified_dialog(self) -> None:
        dialog = self.unified_dialog()
        if dialog.exec():
            self.submit_unified(dialog.params())

    def submit_unified(self, params: dict[str, Any]) -> None:
        names = ", ".join(params["categories"])
        what = f"Adding {names} to the unified model" if params.get("resume") else f"Training a unified model on {names}"
        self.link.submit("train_unified", params, on_done=self._pending_unified_jobs.add,
                         on_error=lambda m: self.show_error(f"Unified model: {m}"))
        self.status_message.emit(f"{what} in the engine (see Jobs).")

    def open_eval_dialog(self) -> None:
        dialog = EvalDialog(self.model_dir, self.dataset.root if self.dataset else None,
                            self.dataset.categories if self.dataset else [], self,
                            models=self.models_panel.models(), check_paths=self.link.is_local)
        if dialog.exec():
            self.link.submit("eval", dialog.params(), on_error=lambda m: self.show_error(f"Evaluation: {m}"))

    def open_engine_settings(self) -> None:
        dialog = EngineSettingsDialog(load_settings(), self)
        if dialog.exec():
            settings: EngineSettings = dialog.settings()
            save_settings(settings)
            self.link.stop()
            self.link.start(settings)

    def _on_engine_status(self, state: str, detail: str) -> None:
        where = "local" if self.link.is_local else self.link.url
        colour = ENGINE_COLOURS.get(state, "#757575")
        self.engine_label.setText(f"<span style='color:{colour}'>●</span> engine {state} ({where})")
        self.engine_label.setToolTip(detail)
        if state in ("unreachable", "unauthorized"):
            self.show_banner(f"Engine {state}: {detail or where}. Jobs wait until it is back "
                             "(Engine ▸ Settings to change it).", "error", tag="engine")
        else:
            self.hide_banner_if("engine")

    # ----------------------------------------------------------------- messages
    def show_banner(self, text: str, kind: str = "error", tag: str = "") -> None:
        self.banner.setStyleSheet(BANNER_STYLE[kind])
        self.banner.setText(text)
        self.banner.setProperty("tag", tag)
        self.banner.show()

    def hide_banner_if(self, tag: str) -> None:
        if self.banner.property("tag") == tag:
            self.banner.hide()

    def show_error(self, text: str) -> None:
        """A readable message, never a traceback; also in the status bar for scripts and screenshots."""
        self.status_message.emit(text)
        self.show_banner(text, "error", tag="dataset")

    def choose_screenshot(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", "defectscope.png", "PNG (*.png)")
        if path:
            self.grab().save(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.review.flush_note()
        self._settings().setValue("window/geometry", self.saveGeometry())
        if self.store is not None:
            self.store.close()
        self.browser.cache.close()
        self.link.stop()
        self._closed = True
        wait_for_background(5000)
        super().closeEvent(event)

    def confirm(self, text: str) -> bool:
        return QMessageBox.question(self, "DefectScope", text) == QMessageBox.StandardButton.Yes


def _predictions_index() -> QSettings:
    return QSettings(str(default_data_home() / "predictions.ini"), QSettings.Format.IniFormat)


def _index_key(model_dir: Path, data_root: Path) -> str:
    import hashlib

    return hashlib.sha1(f"{Path(model_dir).resolve()}|{Path(data_root).resolve()}".encode()).hexdigest()[:20]


def _predictions_cache(model_dir: Path, data_root: Path) -> Path:
    return Path(str(_predictions_index().value(_index_key(model_dir, data_root), "") or "/nonexistent"))


def _remember_predictions(model_dir: Path, data_root: Path, folder: Path) -> None:
    _predictions_index().setValue(_index_key(model_dir, data_root), str(folder))
