"""Model ▸ Pretrain on unlabelled images: which folders form the pool, who scores it, what stays out of it.

The scoring and box-rule fields come from the pseudo_boxes job's pydantic model (app/gui/param_form.py), so the
dialog and the engine agree on what is valid; the folders and the scorer are chosen here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.job_dialog import _ValidatingDialog
from app.gui.param_form import ParamForm

SCORER_MUTUAL = "mutual"  # the pseudo_boxes job's name for mutual scoring


class PretrainDialog(_ValidatingDialog):
    """Parameters of the pseudo_boxes job that starts a pretraining (backbone, then detector, follow)."""

    def __init__(self, folders: list[Path], dataset_root: Path | None, anomaly_model: Path | None,
                 parent: QWidget | None = None, *, check_paths: bool = True) -> None:
        super().__init__("Pretrain the detector on unlabelled images", parent)
        self._check_paths = check_paths
        self.folders = QListWidget()
        self.folders.addItems([str(f) for f in folders])
        add, remove = QPushButton("Add folder…"), QPushButton("Remove")
        add.clicked.connect(self._add_folder)
        remove.clicked.connect(self._remove_selected)
        buttons = QVBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.folders, 1)
        row.addLayout(buttons)
        holder = QWidget()
        holder.setLayout(row)
        self.form.addRow("Unlabelled folders", holder)

        self.mutual = QRadioButton("Mutual scoring: each image against the others of its folder (no good images "
                                   "needed)")
        self.model_button = QRadioButton(f"The active anomaly model ({anomaly_model.name})" if anomaly_model
                                         else "The active anomaly model (none is active)")
        self.model_button.setEnabled(anomaly_model is not None)
        self._anomaly_model = anomaly_model
        (self.model_button if anomaly_model is not None else self.mutual).setChecked(True)
        scorer = QVBoxLayout()
        scorer.addWidget(self.mutual)
        scorer.addWidget(self.model_button)
        box = QWidget()
        box.setLayout(scorer)
        self.form.addRow("Anomaly maps from", box)

        self._dataset_root = dataset_root
        self.exclude = QCheckBox(f"Keep the test images of {dataset_root.name} out of the pool" if dataset_root
                                 else "Keep a dataset's test images out of the pool (no dataset is open)")
        self.exclude.setChecked(dataset_root is not None)
        self.exclude.setEnabled(dataset_root is not None)
        self.form.addRow("", self.exclude)

        self.fields = ParamForm.for_job("pseudo_boxes", ["margin", "top_k", "references", "device"])
        self.fields.add_rows(self.form)
        self.resize(640, self.sizeHint().height())

    def _add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of unlabelled images")
        if folder:
            self.folders.addItem(folder)

    def _remove_selected(self) -> None:
        for item in self.folders.selectedItems():
            self.folders.takeItem(self.folders.row(item))

    def pool(self) -> list[str]:
        return [self.folders.item(i).text() for i in range(self.folders.count())]

    def params(self) -> dict[str, Any]:
        scorer = str(self._anomaly_model) if self.model_button.isChecked() and self._anomaly_model else SCORER_MUTUAL
        exclude = [str(self._dataset_root)] if self.exclude.isChecked() and self._dataset_root else []
        return {**self.fields.values(), "pool": self.pool(), "scorer": scorer, "exclude": exclude}

    def problems(self) -> list[tuple[QWidget | None, str]]:
        pool = self.pool()
        if not pool:
            return [(self.folders, "Add at least one folder of unlabelled images.")]
        if self._check_paths:
            missing = [p for p in pool if not Path(p).expanduser().is_dir()]
            if missing:
                return [(self.folders, f"Folder not found: {missing[0]}")]
        return self.fields.problems(self.params())
