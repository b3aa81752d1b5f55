"""The unified model (one model for many products): Model ▸ Train a unified model, or add products to one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.gui.features.base import Feature, MenuEntry
from app.gui.unified_dialog import UnifiedDialog, unified_runs
from engine.client import JobView


class UnifiedFeature(Feature):
    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "Train a &unified model, or add products to one…", self.open_dialog)]

    def dialog(self) -> UnifiedDialog:
        """The unified-model dialog, with the open dataset's categories and the unified models the engine trained
        (the active one preselected, else the newest: adding a product is the usual next step)."""
        w = self.window
        runs = unified_runs(w.link.jobs)
        model_dir = w.models.model_dir
        active = next((r for r in runs if model_dir is not None and w.link.is_local
                       and Path(r.engine_path).resolve() == model_dir.resolve()), None)
        return UnifiedDialog(w.dataset.root if w.dataset else None, w.dataset.categories if w.dataset else [],
                             runs, w, check_paths=w.link.is_local, add_to=active or (runs[0] if runs else None))

    def open_dialog(self) -> None:
        dialog = self.dialog()
        if dialog.exec():
            self.submit(dialog.params())

    def submit(self, params: dict[str, Any], on_done: Any = None) -> None:
        names = ", ".join(params["categories"])
        what = f"Adding {names} to the unified model" if params.get("resume") else f"Training a unified model on {names}"
        self.window.link.submit("train_unified", params, on_done=on_done, on_finished=self._on_finished,
                                on_error=lambda m: self.window.show_error(f"Unified model: {m}"))
        self.window.status_message.emit(f"{what} in the engine (see Jobs).")

    def _on_finished(self, job: JobView) -> None:
        if job.state == "succeeded":
            products = ", ".join((job.result or {}).get("products") or [])
            self.window.status_message.emit(f"The unified model now covers {products}: it is in the Models panel.")
        elif job.state == "failed":
            self.window.show_error(f"Unified model training failed: {job.error}")
