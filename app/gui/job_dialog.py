"""Dialogs that build engine job parameters (train, eval) and the engine connection settings.

Each dialog refuses to close with OK while something is wrong and says what, in red, next to the form, instead
of letting the engine reject the job later. Parameters are also checked against the job kind's own pydantic
model (engine.jobs.kinds), so the dialog and the engine can never disagree about what is valid.

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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.gui.engine_link import EngineSettings
from engine.errors import DefectScopeError
from engine.jobs.registry import get_job_kind, validate_params

ERROR_STYLE = "color: rgb(200, 30, 30);"
FIELD_ERROR_STYLE = "border: 1px solid rgb(200, 30, 30);"
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DEVICES = ("auto", "cpu", "cuda")
ALL_CATEGORIES = "(all categories)"


class _PathField(QWidget):
    """A line edit with a Browse… button (folder or file)."""

    def __init__(self, text: str = "", caption: str = "Choose a folder", file_filter: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit(text)
        self.button = QPushButton("Browse…")
        self._caption, self._filter = caption, file_filter
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.button)
        self.button.clicked.connect(self._browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # Qt naming, like the widgets it sits among
        self.edit.setText(text)

    def _browse(self) -> None:
        if self._filter is None:
            chosen = QFileDialog.getExistingDirectory(self, self._caption, self.text())
        else:
            chosen, _ = QFileDialog.getOpenFileName(self, self._caption, self.text(), self._filter)
        if chosen:
            self.edit.setText(chosen)


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

    def _check_kind(self, kind: str, params: dict[str, Any]) -> list[tuple[QWidget | None, str]]:
        job_kind = get_job_kind(kind)
        try:
            # Outputs are the engine's to set; a placeholder stands in for them here, as the engine does.
            validate_params(job_kind, {**params, **{name: "placeholder" for name in job_kind.outputs}})
        except DefectScopeError as exc:
            return [(None, str(exc))]
        return []


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


class TrainDialog(_ValidatingDialog):
    """Parameters of a train_anomaly job (the engine sets where the model goes)."""

    def __init__(self, data: str | Path | None = None, categories: Sequence[str] = (),
                 parent: QWidget | None = None, *, check_paths: bool = True) -> None:
        super().__init__("Train an anomaly model", parent)
        self._check_paths = check_paths
        self.data_field = _PathField(str(data or ""), "Dataset folder")
        self.category_box = _combo([ALL_CATEGORIES, *categories], categories[0] if categories else None,
                                   editable=True)
        self.image_size = QSpinBox()
        self.image_size.setRange(64, 2048)
        self.image_size.setSingleStep(32)
        self.image_size.setValue(256)
        self.image_size.setToolTip("Longer image side fed to the model")
        self.bank_size = QSpinBox()
        self.bank_size.setRange(16, 1_000_000)
        self.bank_size.setSingleStep(1000)
        self.bank_size.setValue(10_000)
        self.bank_size.setToolTip("Hard cap on memory-bank rows per scale: larger is slower and more precise")
        self.backbone_box = _combo(BACKBONES)
        self.device_box = _combo(DEVICES)
        self.form.addRow("Dataset", self.data_field)
        self.form.addRow("Category", self.category_box)
        self.form.addRow("Image size", self.image_size)
        self.form.addRow("Memory bank size", self.bank_size)
        self.form.addRow("Backbone", self.backbone_box)
        self.form.addRow("Device", self.device_box)
        self.resize(560, self.sizeHint().height())

    def params(self) -> dict[str, Any]:
        return {
            "data": self.data_field.text(),
            "category": _category_value(self.category_box),
            "image_size": self.image_size.value(),
            "bank_size": self.bank_size.value(),
            "backbone": self.backbone_box.currentText(),
            "device": self.device_box.currentText(),
        }

    def problems(self) -> list[tuple[QWidget | None, str]]:
        found: list[tuple[QWidget | None, str]] = []
        data = self.data_field.text()
        if not data:
            found.append((self.data_field.edit, "Choose the dataset folder."))
        elif self._check_paths and not Path(data).expanduser().is_dir():
            found.append((self.data_field.edit, f"Dataset folder not found: {data}"))
        return found or self._check_kind("train_anomaly", self.params())


class EvalDialog(_ValidatingDialog):
    """Parameters of an eval job: a model folder, a dataset and its category (the engine writes the report)."""

    def __init__(self, model: str | Path | None = None, data: str | Path | None = None,
                 categories: Sequence[str] = (), parent: QWidget | None = None, *,
                 models: Sequence[str | Path] = (), check_paths: bool = True) -> None:
        """model: the folder preselected; models: other known model folders offered in the combo."""
        super().__init__("Evaluate a model", parent)
        self._check_paths = check_paths
        choices = list(dict.fromkeys(str(m) for m in [*([model] if model else []), *models]))
        self.model_box = _combo(choices, str(model) if model else None, editable=True)
        self.model_button = QPushButton("Browse…")
        self.model_button.clicked.connect(self._browse_model)
        model_row = QWidget()
        row = QHBoxLayout(model_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.model_box, 1)
        row.addWidget(self.model_button)
        self.data_field = _PathField(str(data or ""), "Dataset folder")
        self.category_box = _combo([ALL_CATEGORIES, *categories], categories[0] if categories else None,
                                   editable=True)
        self.device_box = _combo(DEVICES)
        self.form.addRow("Model folder", model_row)
        self.form.addRow("Dataset", self.data_field)
        self.form.addRow("Category", self.category_box)
        self.form.addRow("Device", self.device_box)
        self.resize(560, self.sizeHint().height())

    def _browse_model(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Model folder (model.onnx + model.json)",
                                                  self.model_box.currentText())
        if chosen:
            self.model_box.setCurrentText(chosen)

    def params(self) -> dict[str, Any]:
        return {
            "model": self.model_box.currentText().strip(),
            "data": self.data_field.text(),
            "category": _category_value(self.category_box),
            "device": self.device_box.currentText(),
        }

    def problems(self) -> list[tuple[QWidget | None, str]]:
        found: list[tuple[QWidget | None, str]] = []
        model, data = self.model_box.currentText().strip(), self.data_field.text()
        if not model:
            found.append((self.model_box, "Choose the model folder."))
        elif self._check_paths and not (Path(model).expanduser() / "model.onnx").is_file():
            found.append((self.model_box, f"No model.onnx in {model}"))
        if not data:
            found.append((self.data_field.edit, "Choose the dataset folder."))
        elif self._check_paths and not Path(data).expanduser().is_dir():
            found.append((self.data_field.edit, f"Dataset folder not found: {data}"))
        return found or self._check_kind("eval", self.params())


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
        self.ca_field = _PathField(settings.tls_ca, "Certificate to trust", "Certificates (*.pem *.crt);;All files (*)")
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
