"""`defectscope gui`: start the workbench (and its local engine), optionally on a dataset, a model, the demo.

`--screenshot FILE --quit-after-ms N` let scripts and tests capture the real window: the screenshot is taken
just before quitting, so it shows whatever the app reached by then.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

DEMO_RUN = "runs/demo_washer"


@dataclass
class GuiOptions:
    dataset: Path | None = None
    category: str | None = None
    model: Path | None = None
    score: bool = False
    demo: bool = False
    screenshot: Path | None = None
    quit_after_ms: int | None = None
    quit_when_scored: bool = False
    engine: bool = True


class DemoPipeline:
    """The quick start's story: open the demo set, train a model through the engine if none exists, score it."""

    def __init__(self, window) -> None:
        from engine.home import default_data_home

        self.window = window
        self.run_dir = default_data_home() / DEMO_RUN
        self.train_job: str | None = None
        self.scored = False
        window.dataset_loaded.connect(self._on_dataset)
        window.link.status_changed.connect(self._on_engine)

    def _on_dataset(self, _root: str) -> None:
        if (self.run_dir / "model.onnx").is_file():
            self.window.models.set_model(self.run_dir)
            if self.window.scoring.predictions is None:
                self._on_engine(self.window.link.state, "")
        else:
            self._on_engine(self.window.link.state, "")

    def _on_engine(self, state: str, _detail: str) -> None:
        if state != "connected" or self.window.dataset is None:
            return
        if (self.run_dir / "model.onnx").is_file():
            if self.window.scoring.predictions is None and not self.scored:
                self.scored = True
                self.window.scoring.score_dataset()
            return
        if self.train_job is None:
            self.train_job = "submitting"
            params = {"data": str(self.window.dataset.root), "image_size": 256, "device": "auto"}
            self.window.link.submit("train_anomaly", params, on_finished=self._on_trained,
                                    on_error=self._on_refused)
            self.window.status_message.emit("No demo model yet: training one through the engine (see Jobs).")

    def _on_refused(self, message: str) -> None:
        self.train_job = None
        self.window.show_error(message)

    def _on_trained(self, job) -> None:  # JobView
        if job.state != "succeeded":
            self.window.show_error(f"Training the demo model failed: {job.error}")
            return
        self.window.link.fetch_model(job, self._on_model, self.window.show_error)

    def _on_model(self, model_dir: Path) -> None:
        import shutil

        # Keep the demo model where the next start finds it (the engine's job folder may be cleaned up).
        if not (self.run_dir / "model.onnx").is_file():
            self.run_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(model_dir, self.run_dir, dirs_exist_ok=True)
        self.window.models.panel.add_model_dir(self.run_dir)
        self.window.models.set_model(self.run_dir)
        self.scored = True
        self.window.scoring.score_dataset()


def run_gui(opts: GuiOptions) -> int:
    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    import pyqtgraph as pg
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("DefectScope")
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

    from app.gui.engine_link import load_settings
    from app.gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    if opts.engine:
        window.link.start(load_settings())
    if opts.demo:
        # Held by the window: Qt connects to bound methods weakly, so an unreferenced pipeline would vanish.
        window.demo_pipeline = DemoPipeline(window)
        window.open_demo()
    elif opts.dataset is not None:
        window.open_dataset(opts.dataset, opts.category)
    if opts.model is not None:
        window.models.set_model(opts.model)
        if opts.score:
            window.dataset_loaded.connect(lambda _r: _score_when_ready(window))
    def finish() -> None:
        if opts.screenshot is not None:
            opts.screenshot.parent.mkdir(parents=True, exist_ok=True)
            window.grab().save(str(opts.screenshot))
            print(f"screenshot: {opts.screenshot}", flush=True)
        window.close()
        app.quit()

    if opts.quit_after_ms is not None:
        QTimer.singleShot(opts.quit_after_ms, finish)
    if opts.quit_when_scored:
        # Give the first heatmap and the thumbnails a moment to arrive before the picture is taken.
        window.scoring.predictions_loaded.connect(lambda _n: QTimer.singleShot(3000, finish))
    elif opts.screenshot is not None and opts.quit_after_ms is None:
        window.scoring.predictions_loaded.connect(lambda _n: QTimer.singleShot(1500, lambda: window.grab().save(
            str(opts.screenshot))))
    return app.exec()


def _score_when_ready(window) -> None:
    if window.link.state == "connected":
        window.scoring.score_dataset()
        return

    def on_status(state: str, _d: str) -> None:
        if state == "connected":
            window.link.status_changed.disconnect(on_status)
            window.scoring.score_dataset()

    window.link.status_changed.connect(on_status)
