"""The workbench's main window: layout and navigation only (browser | image view | review panel, the open
dataset and its review decisions). Each feature in app.gui.features.FEATURES is a controller owning its dock, menu
actions and the outcomes of the jobs it submits (EngineLink.submit(on_finished=)): nothing here knows job kinds.
Everything slow runs off the GUI thread (app.gui.tasks) or in the engine; the GUI thread moves small results.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QByteArray, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.gui.browser import BrowserWidget
from app.gui.engine_link import EngineLink, gui_settings
from app.gui.features import FEATURES, Feature, MenuEntry
from app.gui.image_view import ImageView
from app.gui.review_panel import ReviewPanel
from app.gui.tasks import run_in_background, wait_for_background
from app.keys import sample_key
from app.review.store import ReviewStore, ReviewStoreError, store_for_dataset
from engine.datasets import load_dataset
from engine.datasets.demo import ensure_demo_dataset
from engine.datasets.imageio import read_mask
from engine.datasets.types import Dataset, Sample

DEMO_CATEGORY = "washer"
MENUS = ("&File", "&Model", "&Engine")  # menu order; features add their actions to these by title
BANNER_STYLE = {
    "error": "background:#c62828; color:white; padding:6px; font-weight:bold;",
    "info": "background:#1565c0; color:white; padding:6px;",
    "warning": "background:#ef8f00; color:black; padding:6px;",
}


class MainWindow(QMainWindow):
    dataset_loaded = Signal(str)  # root; emitted before the first image of the new dataset is selected
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
        self.shown_key: str | None = None

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
        self.status_message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        # Navigation first: the features' handlers of the same signals run after the window's.
        self.browser.current_changed.connect(self._on_current_changed)
        self.review.verdict_requested.connect(self.set_verdict)
        self.review.note_changed.connect(self._on_note)
        self.image_view.load_failed.connect(lambda _k, reason: self.status_message.emit(reason))

        self._menus: dict[str, QMenu] = {title: self.menuBar().addMenu(title) for title in MENUS}
        self._build_file_menu()
        self._build_features()
        self._build_shortcuts()
        geometry = self.settings().value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)

    # ----------------------------------------------------------------- construction
    def _build_features(self) -> None:
        """Every row of the feature table: its controller (window.<name>), its dock, its menu actions."""
        self.features: dict[str, Feature] = {}
        docks: list[QDockWidget] = []
        for row in FEATURES:
            feature = row.controller(self)
            self.features[row.name] = feature
            setattr(self, row.name, feature)
            widget = feature.dock_widget()
            if row.dock and widget is not None:
                docks.append(self.add_dock(row.dock, widget, Qt.DockWidgetArea.BottomDockWidgetArea))
            for entry in feature.menu_entries():
                self._add_action(entry)
        for first, second in pairwise(docks):
            self.tabifyDockWidget(first, second)
        if docks:
            docks[0].raise_()
            self.resizeDocks([docks[0]], [260], Qt.Orientation.Vertical)

    def add_dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _add_action(self, entry: MenuEntry) -> QAction:
        menu = self._menus.get(entry.menu) or self._menus.setdefault(entry.menu, self.menuBar().addMenu(entry.menu))
        if entry.separator_before:
            menu.addSeparator()
        act = QAction(entry.text, self)
        if entry.shortcut:
            act.setShortcut(QKeySequence(entry.shortcut))
        act.triggered.connect(entry.slot)
        menu.addAction(act)
        return act

    def _build_file_menu(self) -> None:
        for entry in (MenuEntry("&File", "&Open dataset folder…", self.choose_dataset, "Ctrl+O"),
                      MenuEntry("&File", "Open &demo dataset", self.open_demo),
                      MenuEntry("&File", "&Export decisions as CSV…", self.choose_export_csv, "Ctrl+E", True),
                      MenuEntry("&File", "Save &screenshot…", self.choose_screenshot),
                      MenuEntry("&File", "&Quit", self.close, "Ctrl+Q", True)):
            self._add_action(entry)

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

    def background(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
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
        self.background(ensure_demo_dataset, lambda root: self.open_dataset(Path(root) / DEMO_CATEGORY),
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

        self.background(load, lambda result: self._on_dataset(*result, time.perf_counter() - started, category),
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
        self.shown_key = None
        self.browser.set_dataset(ds.root, ds.samples, ds.issues)
        self.browser.model.set_verdicts({k: d.verdict for k, d in store.latest().items()})
        self.setWindowTitle(f"DefectScope — {ds.root}")
        issues = f", {len(ds.issues)} files with problems (marked !)" if ds.issues else ""
        self.status_message.emit(f"{len(ds.samples)} images ({ds.format}) in {seconds:.1f} s{issues}")
        self.hide_banner_if("dataset")
        # Features drop what belonged to the previous dataset before the first image of this one is shown.
        self.dataset_loaded.emit(str(ds.root))
        if self.browser.visible_keys():
            self.browser.select_key(self.browser.visible_keys()[0])

    # ----------------------------------------------------------------- navigation and review
    def next_image(self) -> None:
        self.browser.select_next()

    def previous_image(self) -> None:
        self.browser.select_previous()

    def current_key(self) -> str | None:
        return self.browser.current_key()

    def _on_current_changed(self, key: str) -> None:
        self.review.flush_note()
        self.shown_key = key or None
        row = self.browser.model.row_for_key(key) if key else -1
        if row < 0:
            self.image_view.clear()
            return
        # Rows for files the reader could not take (corrupt images) are not dataset samples but still open, so
        # the view can say what is wrong with them.
        sample = self.samples.get(key) or self.browser.model.sample_at(row)
        self.image_view.load(sample.image_path, key)
        self.image_view.set_annotations(sample.boxes, sample.polygons, self.dataset.class_names if self.dataset else ())
        truth = sample.label + (f" ({sample.defect_type})" if sample.defect_type and sample.label != "good" else "")
        # The score and heatmap follow from the scoring feature, connected to the same signal after this.
        self.review.show_image(key, f"{truth}, {sample.split}", None, self.review.threshold())
        self._show_decision(key)
        if sample.mask_path is not None:
            path = sample.mask_path

            def decode() -> np.ndarray | None:
                # Holding an arrow key queues one decode per image passed: skip those already left behind.
                return read_mask(path) if self.shown_key == key else None

            self.background(decode, lambda m, k=key: self._on_mask(k, m),
                           lambda msg: self.status_message.emit(f"mask: {msg}"))
        else:
            self.image_view.set_mask(None)

    def _on_mask(self, key: str, mask: np.ndarray | None) -> None:
        if mask is not None and key == self.shown_key:  # the user may have moved on while it decoded
            self.image_view.set_mask(mask)

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
        score = self.scoring.score_of(key)
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
        key = self.shown_key
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

    settings = staticmethod(gui_settings)  # the GUI's ini file in the data home

    def closeEvent(self, event: QCloseEvent) -> None:
        self.review.flush_note()
        self.settings().setValue("window/geometry", self.saveGeometry())
        if self.store is not None:
            self.store.close()
        self.browser.cache.close()
        self.link.stop()
        self._closed = True
        wait_for_background(5000)
        super().closeEvent(event)
