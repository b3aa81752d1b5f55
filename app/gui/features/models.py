"""The active model: the Models dock, Model ▸ Use model folder, and the status-bar label.

Whether a folder is a model, and which kind, is the model-format owner's answer (read_model_info), never a probe
for file names here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFileDialog, QLabel, QWidget

from app.gui.features.base import Feature, MenuEntry
from app.gui.models_panel import ModelsPanel
from engine.errors import DefectScopeError
from engine.runtime.model_format import ModelInfo, read_model_info

# model tasks that give each image a score (Score dataset): a defect segmentation model's is its most defect-like
# pixel, its heatmap the defect probability
SCORING_TASKS = frozenset({"anomaly", "detector", "segmentation"})


if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class ModelsFeature(Feature):
    model_changed = Signal(Path)

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.model_dir: Path | None = None
        self.model_info: ModelInfo | None = None
        self.panel = ModelsPanel(window.link)
        self.label = QLabel("no model")
        window.statusBar().addPermanentWidget(self.label)
        self.panel.model_activated.connect(self.set_model)

    def dock_widget(self) -> QWidget:
        return self.panel

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "Use model &folder…", self.choose_model)]

    def choose_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.window, "Model folder")
        if folder:
            self.panel.add_model_dir(Path(folder))
            self.set_model(Path(folder))

    def set_model(self, model_dir: Path) -> None:
        """Make a model folder the active one. Its format is read here, on the GUI thread: one small JSON file,
        and the Models panel has read the same folder off the thread before offering it."""
        try:
            info = read_model_info(Path(model_dir))
        except DefectScopeError as exc:
            self.window.show_error(f"Not a usable model: {exc}")
            return
        if info.task not in SCORING_TASKS:
            self.window.show_error(f"{info.folder}: a {info.task} model, not one that scores images")
            return
        self.model_dir, self.model_info = Path(info.folder), info
        self.label.setText(f"model: {self.model_dir.parent.name}/{self.model_dir.name}")
        run = ("Model ▸ Detect defects (Ctrl+D)" if info.task == "detector" else "Model ▸ Score dataset (Ctrl+R)")
        self.window.status_message.emit(f"Active model {self.model_dir}. {run} runs it on every image.")
        self.model_changed.emit(self.model_dir)
        self.window.scoring.maybe_load_cached()
