"""Text prompts: a typed description ("scratch near the rim") is matched to the dataset's defect classes with a
sentence encoder the engine exports once (ONNX, no torch here); the best match becomes the annotation class and
the browser shows that defect type."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.gui.features.base import Feature
from engine.client import JobView

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class TextPromptsFeature(Feature):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self._export_pending = False
        self._pending_query: str | None = None
        self.text_matches: list[tuple[str, float]] = []
        panel = window.annotation.panel
        panel.find_edit.returnPressed.connect(lambda: self.find_defects(panel.find_edit.text()))

    def find_defects(self, query: str) -> None:
        w = self.window
        panel = w.annotation.panel
        if w.dataset is None or not query.strip():
            return
        folder = Path(str(w.settings().value("text/encoder_dir", "") or "/nonexistent"))
        if not (folder / "text_encoder.onnx").is_file():
            self._pending_query = query
            if not self._export_pending:
                self._export_pending = True
                w.link.submit("export_text_encoder", {}, on_finished=self._on_exported,
                              on_error=self._on_export_refused)
                panel.status.setText("Preparing the text model in the engine (once)…")
            return
        names = sorted({s.defect_type for s in w.dataset.samples if s.defect_type and s.defect_type != "good"}
                       | set(w.dataset.class_names)
                       | {panel.class_combo.itemText(i) for i in range(panel.class_combo.count())})

        def match() -> list[tuple[str, float]]:
            from engine.runtime.text import TextEncoder

            return TextEncoder(folder).match(query, sorted(n for n in names if n))

        w.background(match, lambda ranked: self._on_matches(query, ranked),
                     lambda msg: w.show_error(f"Text prompt: {msg}"))

    def _on_export_refused(self, message: str) -> None:
        self._export_pending = False
        self.window.show_error(f"Text prompts need the engine: {message}")

    def _on_exported(self, job: JobView) -> None:
        self._export_pending = False
        if job.state != "succeeded":
            self.window.show_error(f"Preparing the text model failed: {job.error}")
            return

        def ready(folder: Path) -> None:
            self.window.settings().setValue("text/encoder_dir", str(folder))
            if self._pending_query:
                self.find_defects(self._pending_query)

        self.window.link.fetch_artifact_dir(job, "text_encoder", ready,
                                            lambda m: self.window.show_error(f"Cannot fetch the text model: {m}"))

    def _on_matches(self, query: str, ranked: list[tuple[str, float]]) -> None:
        w = self.window
        panel = w.annotation.panel
        self.text_matches = ranked
        if not ranked:
            panel.status.setText(f"No defect classes to match \"{query}\" against.")
            return
        best = ranked[0][0]
        panel.class_combo.setCurrentText(best)
        shown = ", ".join(f"{n} {s:.2f}" for n, s in ranked[:3])
        types = {s.defect_type for s in w.dataset.samples} if w.dataset else set()
        if best in types:
            i = w.browser.defect_combo.findData(best)
            if i >= 0:
                w.browser.defect_combo.setCurrentIndex(i)
        panel.status.setText(f"\"{query}\" matches {shown}: class set to {best}"
                             + (", browser shows that defect type." if best in types else "."))
