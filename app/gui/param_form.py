"""Dialog fields derived from a job's pydantic params model: each field's widget, default, range, step and choices
are read from the model (engine.jobs.fields), and the values are checked by that same model, each refusal shown
next to its widget with the field's own message. A dialog builds the fields it shows from here and adds only what
the model cannot say (a dataset's categories, the models the engine knows).

int -> spin box (ge/le, step multiple_of; an optional one has a "default" entry below its minimum), float ->
double spin box, bool -> check box, Literal -> combo box, str -> line edit (with Browse… for path fields), list ->
comma-separated line edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from engine.jobs.fields import ParamField, describe_params
from engine.jobs.registry import get_job_kind, param_problems

DEFAULT_TEXT = "default"  # an optional number left to the job (None)
_INT_LIMIT = 2**31 - 1
_FLOAT_LIMIT = 1e12


class PathField(QWidget):
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


@dataclass
class _Editor:
    widget: QWidget
    get: Callable[[], Any]
    set: Callable[[Any], None]
    focus: QWidget  # what is marked and focused when the value is refused


def _int_editor(field: ParamField, _caption: str | None) -> _Editor:
    box = QSpinBox()
    step = int(field.multiple_of or 1)
    low = field.ge if field.ge is not None else (field.gt + 1 if field.gt is not None else -_INT_LIMIT)
    high = field.le if field.le is not None else (field.lt - 1 if field.lt is not None else _INT_LIMIT)
    if field.optional:  # one step below the range stands for "leave it to the job"
        low -= step
        box.setSpecialValueText(DEFAULT_TEXT)
    box.setRange(int(low), int(high))
    box.setSingleStep(step)
    floor = int(low)

    def get() -> int | None:
        return None if field.optional and box.value() == floor else box.value()

    return _Editor(box, get, lambda v: box.setValue(floor if v is None else int(v)), box)


def _float_editor(field: ParamField, _caption: str | None) -> _Editor:
    box = QDoubleSpinBox()
    typical = [abs(v) for v in (field.default, field.minimum, field.maximum) if isinstance(v, int | float) and v]
    box.setDecimals(6 if typical and min(typical) < 0.01 else 3)
    low = field.minimum if field.minimum is not None else -_FLOAT_LIMIT
    high = field.maximum if field.maximum is not None else _FLOAT_LIMIT
    if field.optional:
        low -= 1
        box.setSpecialValueText(DEFAULT_TEXT)
    box.setRange(low, high)
    box.setSingleStep(field.multiple_of or (0.1 if high - low <= 10 else 1.0))
    floor = low

    def get() -> float | None:
        return None if field.optional and box.value() == floor else box.value()

    return _Editor(box, get, lambda v: box.setValue(floor if v is None else float(v)), box)


def _bool_editor(field: ParamField, _caption: str | None) -> _Editor:
    box = QCheckBox()
    return _Editor(box, box.isChecked, lambda v: box.setChecked(bool(v)), box)


def _choice_editor(field: ParamField, _caption: str | None) -> _Editor:
    box = QComboBox()
    box.addItems([str(c) for c in field.choices])

    def get() -> Any:
        return field.choices[box.currentIndex()] if box.currentIndex() >= 0 else None

    return _Editor(box, get, lambda v: box.setCurrentText(str(v)), box)


def _text_editor(field: ParamField, caption: str | None) -> _Editor:
    if caption is not None:
        path = PathField("", caption)
        edit, widget = path.edit, path
    else:
        edit = widget = QLineEdit()

    def get() -> str | None:
        text = edit.text().strip()
        return None if not text and field.optional else text

    return _Editor(widget, get, lambda v: edit.setText("" if v is None else str(v)), edit)


def _list_editor(field: ParamField, _caption: str | None) -> _Editor:
    edit = QLineEdit()
    edit.setPlaceholderText("comma-separated")

    def get() -> list[Any] | None:
        items = [t.strip() for t in edit.text().split(",") if t.strip()]
        if not items and field.optional:
            return None
        values = []
        for item in items:
            try:
                values.append(field.convert(item))
            except ValueError:
                values.append(item)  # left for the model to refuse, with its message
        return values

    return _Editor(edit, get, lambda v: edit.setText(", ".join(map(str, v or []))), edit)


# value kind -> editor; a list of any kind is a comma-separated line edit
EDITORS: dict[str, Callable[[ParamField, str | None], _Editor]] = {
    "int": _int_editor, "float": _float_editor, "bool": _bool_editor, "choice": _choice_editor, "text": _text_editor,
}


class ParamForm:
    """The editors of some fields of a params model, plus the check of a whole params dict against the model.

    `paths` names the text fields that get a Browse… button (field -> the file dialog's caption); `fixed` holds
    values the dialog does not show but the model needs (the engine's outputs)."""

    def __init__(self, model: type[BaseModel], fields: Sequence[str], *, paths: Mapping[str, str] | None = None,
                 fixed: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.described = describe_params(model)
        self.fixed = dict(fixed or {})
        self._editors: dict[str, _Editor] = {}
        self._attached: dict[str, QWidget] = {}
        for name in fields:
            field = self.described[name]
            build = _list_editor if field.multiple else EDITORS[field.kind]
            editor = build(field, (paths or {}).get(name))
            editor.set(field.default)
            if field.description:
                editor.widget.setToolTip(field.description[:1].upper() + field.description[1:])
            self._editors[name] = editor

    @classmethod
    def for_job(cls, kind: str, fields: Sequence[str], *, paths: Mapping[str, str] | None = None) -> ParamForm:
        """A form for a job kind: its outputs, which the engine sets, stand in as placeholders when checking."""
        job = get_job_kind(kind)
        return cls(job.params, fields, paths=paths, fixed={name: "placeholder" for name in job.outputs})

    def widget(self, name: str) -> QWidget:
        return self._editors[name].widget

    def title(self, name: str) -> str:
        return self.described[name].title

    def add_rows(self, form: QFormLayout, names: Sequence[str] | None = None) -> None:
        for name in names if names is not None else list(self._editors):
            form.addRow(self.title(name), self._editors[name].widget)

    def attach(self, name: str, widget: QWidget) -> None:
        """A field the dialog edits with its own widget: refusals of that field mark this widget."""
        self._attached[name] = widget

    def value(self, name: str) -> Any:
        return self._editors[name].get()

    def set_value(self, name: str, value: Any) -> None:
        self._editors[name].set(value)

    def values(self) -> dict[str, Any]:
        return {name: editor.get() for name, editor in self._editors.items()}

    def problems(self, params: Mapping[str, Any]) -> list[tuple[QWidget | None, str]]:
        """What the params model refuses in `params`, each with the widget of its field and the field's message."""
        found: list[tuple[QWidget | None, str]] = []
        for field, message in param_problems(self.model, {**self.fixed, **params}):
            name = field.split(".", 1)[0]
            widget = self._editors[name].focus if name in self._editors else self._attached.get(name)
            title = self.described[name].title if name in self.described else field
            found.append((widget, f"{title}: {message}"))
        return found
