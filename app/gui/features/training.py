"""Model ▸ Train… and Model ▸ Evaluate…: the job dialogs (their fields come from the jobs' parameter models)."""

from __future__ import annotations

from app.gui.features.base import Feature, MenuEntry
from app.gui.job_dialog import EvalDialog, TrainDialog
from engine.client import JobView


class TrainingFeature(Feature):
    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Train…", self.open_train_dialog, "Ctrl+T", separator_before=True),
                MenuEntry("&Model", "&Evaluate…", self.open_eval_dialog)]

    def open_train_dialog(self) -> None:
        w = self.window
        # A remote engine's paths are its own: they cannot be checked on this computer.
        dialog = TrainDialog(w.dataset.root if w.dataset else None, w.dataset.categories if w.dataset else [], w,
                             check_paths=w.link.is_local)
        if dialog.exec():
            w.link.submit("train_anomaly", dialog.params(), on_finished=self._on_trained,
                          on_error=lambda m: w.show_error(f"Training: {m}"))

    def _on_trained(self, job: JobView) -> None:
        if job.state == "succeeded":
            self.window.status_message.emit("Training finished: the model is in the Models panel.")
        elif job.state == "failed":
            self.window.show_error(f"Training failed: {job.error}")

    def open_eval_dialog(self) -> None:
        w = self.window
        dialog = EvalDialog(w.models.model_dir, w.dataset.root if w.dataset else None,
                            w.dataset.categories if w.dataset else [], w,
                            models=w.models.panel.models(), check_paths=w.link.is_local)
        if dialog.exec():
            # On a remote engine the link names a model it made by its job's ref and uploads other local folders;
            # a path that does not exist here is the engine's own.
            w.link.submit("eval", dialog.params(),
                          on_finished=self.report_failure("Evaluation"),
                          on_error=lambda m: w.show_error(f"Evaluation: {m}"))
