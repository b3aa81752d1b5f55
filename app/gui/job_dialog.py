"""Dialogs that build engine job parameters (train, eval) and the engine connection settings.

Each dialog refuses to close with OK while something is wrong and says what, in red, next to the form, instead
of letting the engine reject the job later. The job fields, with their defaults, ranges and choices, come from the
job kind's own pydantic model (app/gui/param_form.py), and the parameters are checked by that model, so the dialog
and the engine can never disagree about what is valid.

Paths are checked on this computer only when the engine is local (`check_paths=True`): a remote engine reads
datasets and models on its own disks, which this computer may not see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.engine_link import EngineSettings
from app.gui.param_form import ParamForm, PathField

ERROR_STYLE = "color: rgb(200, 30, 30);"
FIELD_ERROR_STYLE = "border: 1px solid rgb(200, 30, 30);"
ALL_CATEGORIES = "(all categories)"


class _ValidatingDialog(QDialog):
    """OK runs `problems()`; any problem keeps the dialog open and is shown under the form."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.form = QFormLayout()
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)
        self._marked: list[QWidget] = []

    def problems(self) -> list[tuple[QWidget | None, str]]:
        return []

    def errors(self) -> list[str]:
        """The problems the dialog would show now (also what OK checks)."""
        return [message for _w, message in self.problems()]

    def accept(self) -> None:
        for widget in self._marked:
            widget.setStyleSheet("")
        self._marked = []
        found = self.problems()
        if not found:
            self.error_label.hide()
            super().accept()
            return
        for widget, _message in found:
            if widget is not None:
                widget.setStyleSheet(FIELD_ERROR_STYLE)
                self._marked.append(widget)
        self.error_label.setText("\n".join(message for _w, message in found))
        self.error_label.show()
        if found[0][0] is not None:
            found[0][0].setFocus()



def _combo(items: Sequence[str], current: str | None = None, editable: bool = False) -> QComboBox:
    box = QComboBox()
    box.setEditable(editable)
    box.addItems(list(items))
    if current is not None:
        box.setCurrentText(current)
    return box


def _category_value(box: QComboBox) -> str | None:
    text = box.currentText().strip()
    return None if text in ("", ALL_CATEGORIES) else text


def _folder_problems(edit: QLineEdit, text: str, check_paths: bool) -> list[tuple[QWidget | None, str]]:
    if not text:
        return [(edit, "Choose the dataset folder.")]
    if check_paths and not Path(text).expanduser().is_dir():
        return [(edit, f"Dataset folder not found: {text}")]
    return []


class TrainDialog(_ValidatingDialog):
    """Parameters of a train_anomaly job (the engine sets where the model goes)."""

    def __init__(self, data: str | Path | None = None, categories: Sequence[str] = (),
                 parent: QWidget | None = None, *, check_paths: bool = True) -> None:
        super().__init__("Train an anomaly model", parent)
        self._check_paths = check_paths
        self.fields = ParamForm.for_job("train_anomaly", ["data", "image_size", "bank_size", "backbone", "device"],
                                        paths={"data": "Dataset folder"})
        self.data_field: PathField = self.fields.widget("data")
        self.data_field.setText(str(data or ""))
        self.category_box = _combo([ALL_CATEGORIES, *categories], categories[0] if categories else None,
                                   editable=True)
        self.fields.attach("category", self.category_box)
        self.image_size = self.fields.widget("image_size")
        self.bank_size = self.fields.widget("bank_size")
        self.backbone_box = self.fields.widget("backbone")
        self.device_box = self.fields.widget("device")
        self.form.addRow("Dataset", self.data_field)
        self.form.addRow("Category", self.category_box)
        self.fields.add_rows(self.form, ["image_size", "bank_size", "backbone", "device"])
        self.resize(560, self.sizeHint().height())

    def params(self) -> dict[str, Any]:
        return {**self.fields.values(), "category": _category_value(self.category_box)}

    def problems(self) -> list[tuple[QWidget | None, str]]:
        found = _folder_problems(self.data_field.edit, self.data_field.text(), self._check_paths)
        return found or self.fields.problems(self.params())


class EvalDialog(_ValidatingDialog):
    """Parameters of an eval job: a model folder, a dataset and its category (the engine writes the report)."""

    def __init__(self, model: str | Path | None = None, data: str | Path | None = None,
                 categories: Sequence[str] = (), parent: QWidget | None = None, *,
                 models: Sequence[str | Path] = (), check_paths: bool = True) -> None:
        """model: the folder preselected; models: other known model folders offered in the combo."""
        super().__init__("Evaluate a model", parent)
        self._check_paths = check_paths
        self.fields = ParamForm.for_job("eval", ["data", "device"], paths={"data": "Dataset folder"})
        choices = list(dict.fromkeys(str(m) for m in [*([model] if model else []), *models]))
        self.model_box = _combo(choices, str(model) if model else None, editable=True)
        self.fields.attach("model", self.model_box)
        self.model_button = QPushButton("Browse…")
        self.model_button.clicked.connect(self._browse_model)
        model_row = QWidget()
        row = QHBoxLayout(model_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.model_box, 1)
        row.addWidget(self.model_button)
        self.data_field: PathField = self.fields.widget("data")
        self.data_field.setText(str(data or ""))
        self.category_box = _combo([ALL_CATEGORIES, *categories], categories[0] if categories else None,
                                   editable=True)
        self.fields.attach("category", self.category_box)
        self.device_box = self.fields.widget("device")
        self.form.addRow("Model folder", model_row)
        self.form.addRow("Dataset", self.data_field)
        self.form.addRow("Category", self.category_box)
        self.fields.add_rows(self.form, ["device"])
        self.resize(560, self.sizeHint().height())

    def _browse_model(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Model folder (model.onnx + model.json)",
                                                  self.model_box.currentText())
        if chosen:
            self.model_box.setCurrentText(chosen)

    def params(self) -> dict[str, Any]:
        return {"model": self.model_box.currentText().strip(), **self.fields.values(),
                "category": _category_value(self.category_box)}

    def problems(self) -> list[tuple[QWidget | None, str]]:
        found: list[tuple[QWidget | None, str]] = []
        model = self.model_box.currentText().strip()
        if not model:
            found.append((self.model_box, "Choose the model folder."))
        elif self._check_paths and not (Path(model).expanduser() / "model.onnx").is_file():
            found.append((self.model_box, f"No model.onnx in {model}"))
        found += _folder_problems(self.data_field.edit, self.data_field.text(), self._check_paths)
        return found or self.fields.problems(self.params())


class EngineSettingsDialog(_ValidatingDialog):
    """Local engine (started by the app) or a remote engine by URL, token and optional TLS certificate."""

    def __init__(self, settings: EngineSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__("Engine", parent)
        settings = settings or EngineSettings()
        self.local_radio = QRadioButton("Local: the app starts its own engine on this computer")
        self.remote_radio = QRadioButton("Remote: an engine running elsewhere (defectscope engine serve)")
        group = QButtonGroup(self)
        group.addButton(self.local_radio)
        group.addButton(self.remote_radio)
        (self.remote_radio if settings.mode == "remote" else self.local_radio).setChecked(True)
        self.url_edit = QLineEdit(settings.url)
        self.url_edit.setPlaceholderText("https://host:8765")
        self.token_edit = QLineEdit(settings.token)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("the engine's bearer token (its --token-file)")
        self.ca_field = PathField(settings.tls_ca, "Certificate to trust", "Certificates (*.pem *.crt);;All files (*)")
        self.ca_field.edit.setPlaceholderText("optional: the engine's cert.pem for a self-signed https engine")
        self.form.addRow(self.local_radio)
        self.form.addRow(self.remote_radio)
        self.form.addRow("URL", self.url_edit)
        self.form.addRow("Token", self.token_edit)
        self.form.addRow("TLS certificate", self.ca_field)
        self.remote_radio.toggled.connect(self._mode_changed)
        self._mode_changed()
        self.resize(560, self.sizeHint().height())

    def _mode_changed(self) -> None:
        remote = self.remote_radio.isChecked()
        for widget in (self.url_edit, self.token_edit, self.ca_field):
            widget.setEnabled(remote)

    def settings(self) -> EngineSettings:
        return EngineSettings(
            mode="remote" if self.remote_radio.isChecked() else "local",
            url=self.url_edit.text().strip().rstrip("/"),
            token=self.token_edit.text().strip(),
            tls_ca=self.ca_field.text(),
        )

    def problems(self) -> list[tuple[QWidget | None, str]]:
        if not self.remote_radio.isChecked():
            return []
        found: list[tuple[QWidget | None, str]] = []
        s = self.settings()
        if not s.url.startswith(("http://", "https://")) or len(s.url.split("://", 1)[1]) == 0:
            found.append((self.url_edit, "The URL must start with http:// or https:// and name a host."))
        if not s.token:
            found.append((self.token_edit, "A remote engine needs its token."))
        if s.tls_ca and not Path(s.tls_ca).expanduser().is_file():
            found.append((self.ca_field.edit, f"Certificate file not found: {s.tls_ca}"))
        return found
