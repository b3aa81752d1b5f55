"""Dialog for the unified model (one anomaly model for many products): train a new one, or add products to one the
engine trained before, without the earlier products' images (a train_unified job with `resume`).

The products are the dataset's categories, ticked in a list; in "add" mode the products the chosen model already
knows are shown ticked and greyed out, so they cannot be learned twice. The engine-side folder of the chosen
model is named to the engine by its artifact reference (`job:<id>/model`, engine.server.layout), never by a path, so
this works with a remote engine as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit, QListWidget, QListWidgetItem, QWidget

from app.gui.job_dialog import _combo, _ValidatingDialog
from app.gui.param_form import ParamForm, PathField
from engine.server.layout import artifact_ref

NEW_MODEL = "(new unified model)"


@dataclass(frozen=True)
class UnifiedRun:
    """A unified model the engine trained: where it lives on the engine, and what it knows."""

    label: str
    engine_path: str  # the engine's own folder of the model (compared with the active model on a local engine)
    products: tuple[str, ...]
    image_size: int | None = None
    ref: str = ""  # what a resume sends: the engine's reference to the model artifact of that job


def _field(job: Any, name: str) -> Any:
    """A job as the engine link lists it: a JobView (engine.client), or its dict form."""
    return job.get(name) if isinstance(job, Mapping) else getattr(job, name, None)


def unified_runs(jobs: Sequence[Any]) -> list[UnifiedRun]:
    """Succeeded train_unified jobs, newest first."""
    runs = []
    for job in sorted(jobs, key=lambda j: float(_field(j, "created") or 0.0), reverse=True):
        if _field(job, "kind") != "train_unified" or _field(job, "state") != "succeeded":
            continue
        params, result = _field(job, "params") or {}, _field(job, "result") or {}
        products = tuple(result.get("products") or params.get("categories") or ())
        if not params.get("out"):
            continue
        job_id = str(_field(job, "id") or "")
        runs.append(UnifiedRun(f"{', '.join(products)}  (job {job_id[:8]})", str(params["out"]), products,
                               params.get("image_size"), artifact_ref(job_id, "model")))
    return runs


class UnifiedDialog(_ValidatingDialog):
    """Parameters of a train_unified job: a base step, or an incremental step on a chosen earlier model."""

    def __init__(self, data: str | Path | None = None, categories: Sequence[str] = (),
                 runs: Sequence[UnifiedRun] = (), parent: QWidget | None = None, *, check_paths: bool = True,
                 add_to: UnifiedRun | None = None) -> None:
        super().__init__("Unified model: train, or add products", parent)
        self._check_paths = check_paths
        self._runs = list(runs)
        self.model_box = _combo([NEW_MODEL, *(r.label for r in self._runs)])
        self.model_box.setToolTip("Add products to a unified model trained before: its products' images are not "
                                  "needed again, and it keeps detecting their defects")
        self.fields = ParamForm.for_job("train_unified", ["data", "epochs", "image_size", "device"],
                                        paths={"data": "Dataset folder (one category folder per product)"})
        self.data_field: PathField = self.fields.widget("data")
        self.data_field.setText(str(data or ""))
        self.products = QListWidget()
        self.products.setToolTip("Products (categories) to learn in this step")
        self.more_edit = QLineEdit()
        self.more_edit.setPlaceholderText("other categories, comma-separated (e.g. on a remote engine's dataset)")
        self.fields.attach("categories", self.products)
        self.fields.attach("resume", self.model_box)
        self.epochs = self.fields.widget("epochs")
        self.image_size = self.fields.widget("image_size")
        self.device_box = self.fields.widget("device")
        self.form.addRow("Model", self.model_box)
        self.form.addRow("Dataset", self.data_field)
        self.form.addRow("Products", self.products)
        self.form.addRow("", self.more_edit)
        self.fields.add_rows(self.form, ["epochs", "image_size", "device"])
        self._categories = list(categories)
        self.model_box.currentIndexChanged.connect(self._model_changed)
        if add_to is not None and add_to in self._runs:
            self.model_box.setCurrentIndex(1 + self._runs.index(add_to))
        self._model_changed()
        self.resize(600, self.sizeHint().height())

    def run(self) -> UnifiedRun | None:
        """The model products are added to, or None for a new model."""
        i = self.model_box.currentIndex()
        return self._runs[i - 1] if i > 0 else None

    def _model_changed(self) -> None:
        run = self.run()
        known = set(run.products) if run else set()
        checked = set(self.chosen_products()) - known
        self.products.clear()
        for name in self._categories:
            item = QListWidgetItem(f"{name}  (already learned)" if name in known else name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            if name in known:
                item.setFlags(Qt.ItemFlag.NoItemFlags)  # shown for context, cannot be chosen twice
                item.setCheckState(Qt.CheckState.Checked)
            else:
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.products.addItem(item)
        self.image_size.setEnabled(run is None)
        if run is not None:  # a step keeps the model's size: shown when known, else "default" (the saved one)
            self.fields.set_value("image_size", run.image_size)

    def set_products(self, names: Sequence[str]) -> None:
        """Ticks exactly these products (those not already learned)."""
        for i in range(self.products.count()):
            item = self.products.item(i)
            if item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                wanted = item.data(Qt.ItemDataRole.UserRole) in names
                item.setCheckState(Qt.CheckState.Checked if wanted else Qt.CheckState.Unchecked)

    def chosen_products(self) -> list[str]:
        ticked = [self.products.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.products.count())
                  if self.products.item(i).flags() & Qt.ItemFlag.ItemIsUserCheckable
                  and self.products.item(i).checkState() == Qt.CheckState.Checked]
        typed = [c.strip() for c in self.more_edit.text().split(",") if c.strip()]
        return list(dict.fromkeys([*ticked, *typed]))

    def params(self) -> dict[str, Any]:
        run = self.run()
        params: dict[str, Any] = {**self.fields.values(), "categories": self.chosen_products()}
        if run is not None:
            params["resume"] = run.ref
        if params["image_size"] is None:  # the job's own rule: 256 for a new model, the saved size on resume
            del params["image_size"]
        return params

    def problems(self) -> list[tuple[QWidget | None, str]]:
        found: list[tuple[QWidget | None, str]] = []
        data, run, chosen = self.data_field.text(), self.run(), self.chosen_products()
        if not data:
            found.append((self.data_field.edit, "Choose the dataset folder."))
        elif self._check_paths and not Path(data).expanduser().is_dir():
            found.append((self.data_field.edit, f"Dataset folder not found: {data}"))
        if not chosen:
            found.append((self.products, "Tick at least one product to learn."))
        again = sorted(set(chosen) & set(run.products)) if run else []
        if again:
            found.append((self.more_edit, f"Already learned by this model: {', '.join(again)}."))
        if self._check_paths and data and Path(data).expanduser().is_dir():
            missing = [c for c in chosen if not (Path(data).expanduser() / c).is_dir()]
            if missing:
                found.append((self.more_edit, f"No category folder in {data}: {', '.join(missing)}."))
        return found or self.fields.problems(self.params())

