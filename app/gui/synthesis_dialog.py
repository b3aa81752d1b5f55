"""Model ▸ Synthesize defects: procedural cut-paste of the dataset's real defects (job `synthesize`) or samples of a
trained Defect-Gen generator (job `sample_generator`), each written by the engine as a synthetic set.

Every job field shown comes from that job's pydantic params model (app/gui/param_form.py), all of them except the
ones this dialog chooses itself (the dataset's category, the generator) and the engine's outputs, so a field
added to a params model appears here without a change. A generator is named by its training job's artifact
reference (`job:<id>/generator`, so it works on a remote engine too) or by a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QRadioButton,
    QStackedWidget,
    QWidget,
)

from app.gui.job_dialog import ALL_CATEGORIES, _category_value, _combo, _folder_problems, _ValidatingDialog
from app.gui.param_form import ParamForm, PathField
from engine.jobs.fields import describe_params
from engine.jobs.registry import get_job_kind
from engine.server.layout import artifact_ref

PROCEDURAL, GENERATOR = "synthesize", "sample_generator"  # the job kind each method runs
GENERATOR_ARTIFACT = "generator"  # train_generator's output
GENERATOR_FILE = "generator.json"  # what a generator folder holds (trainers.defectgen's format)
OTHER_FOLDER = "A generator folder…"


def shown_fields(kind: str, chosen_here: Sequence[str]) -> list[str]:
    """The job's fields in the params model's order, less its outputs (the engine's) and those the dialog sets."""
    job = get_job_kind(kind)
    return [name for name in describe_params(job.params) if name not in job.outputs and name not in chosen_here]


def generator_choices(jobs: Sequence[Any]) -> list[tuple[str, str]]:
    """(label, artifact ref) of every succeeded train_generator job the engine lists, newest first."""
    found = []
    for job in sorted(jobs, key=lambda j: j.created or 0.0, reverse=True):
        if job.kind != "train_generator" or job.state != "succeeded":
            continue
        data = Path(str(job.params.get("data") or "")).name or "?"
        preset = job.params.get("preset") or ""
        found.append((f"Generator of job {job.id[:8]} ({data}{', ' + preset if preset else ''})",
                      artifact_ref(job.id, GENERATOR_ARTIFACT)))
    return found


class SynthesisDialog(_ValidatingDialog):
    """The method, then that method's job fields; `job()` is the (kind, params) to submit."""

    def __init__(self, data: str | Path | None = None, categories: Sequence[str] = (),
                 defect_types: Sequence[str] = (), generators: Sequence[tuple[str, str]] = (),
                 parent: QWidget | None = None, *, check_paths: bool = True) -> None:
        super().__init__("Synthesize defects", parent)
        self._check_paths = check_paths
        self.procedural_radio = QRadioButton("Procedural: the dataset's real defects cut along their masks and "
                                             "pasted on good parts (fast, no training)")
        self.generator_radio = QRadioButton("Defect-Gen: sample a trained diffusion generator of defects with masks")
        group = QButtonGroup(self)
        group.addButton(self.procedural_radio)
        group.addButton(self.generator_radio)
        self.procedural_radio.setChecked(True)
        self.form.addRow(self.procedural_radio)
        self.form.addRow(self.generator_radio)

        # procedural: the synthesize job's fields; the category from the open dataset's list
        self.procedural = ParamForm.for_job(PROCEDURAL, shown_fields(PROCEDURAL, ("category", "method")),
                                            paths={"data": "Dataset folder"})
        self.procedural.set_value("data", str(data or ""))
        self.category_box = _combo([ALL_CATEGORIES, *categories], categories[0] if categories else None,
                                   editable=True)
        self.procedural.attach("category", self.category_box)
        if defect_types and "classes" in self.procedural.described:
            edit = self.procedural.widget("classes")
            edit.setPlaceholderText(f"comma-separated; empty: every type with masks ({', '.join(defect_types)})")
        page_procedural = QWidget()
        form = QFormLayout(page_procedural)
        form.setContentsMargins(0, 0, 0, 0)
        self.procedural.add_rows(form, ["data"])
        form.addRow("Category", self.category_box)
        self.procedural.add_rows(form, [n for n in self.procedural.values() if n != "data"])

        # generator: a generator the engine trained, or a folder; the sample_generator job's other fields
        self.generator_box = QComboBox()
        for label, ref in generators:
            self.generator_box.addItem(label, ref)
        self.generator_box.addItem(OTHER_FOLDER, None)
        self.generator_folder = PathField("", "Generator folder (generator.json)")
        self.sampler = ParamForm.for_job(GENERATOR, shown_fields(GENERATOR, ("generator",)),
                                         paths={"data": "Dataset whose good parts receive the defects"})
        self.sampler.attach("generator", self.generator_box)
        page_generator = QWidget()
        form = QFormLayout(page_generator)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Generator", self.generator_box)
        form.addRow("Generator folder", self.generator_folder)
        self.sampler.add_rows(form)
        self.generator_box.currentIndexChanged.connect(self._generator_changed)
        self._generator_changed()

        self.stack = QStackedWidget()
        self.stack.addWidget(page_procedural)
        self.stack.addWidget(page_generator)
        self.form.addRow(self.stack)
        self.generator_radio.toggled.connect(lambda on: self.stack.setCurrentIndex(1 if on else 0))
        self.resize(640, self.sizeHint().height())

    def _generator_changed(self) -> None:
        self.generator_folder.setEnabled(self.generator_box.currentData() is None)

    def kind(self) -> str:
        return GENERATOR if self.generator_radio.isChecked() else PROCEDURAL

    def generator(self) -> str:
        ref = self.generator_box.currentData()
        return str(ref) if ref is not None else self.generator_folder.text()

    def params(self) -> dict[str, Any]:
        if self.kind() == GENERATOR:
            return {**self.sampler.values(), "generator": self.generator()}
        return {**self.procedural.values(), "category": _category_value(self.category_box)}

    def job(self) -> tuple[str, dict[str, Any]]:
        return self.kind(), self.params()

    def problems(self) -> list[tuple[QWidget | None, str]]:
        params = self.params()
        if self.kind() == PROCEDURAL:
            data = self.procedural.widget("data")
            found = _folder_problems(data.edit, params.get("data") or "", self._check_paths)
            return found or self.procedural.problems(params)
        found: list[tuple[QWidget | None, str]] = []
        generator = params["generator"]
        if not generator:
            found.append((self.generator_folder.edit, "Choose a generator the engine trained (a train_generator "
                                                      "job) or a generator folder."))
        elif (self._check_paths and self.generator_box.currentData() is None
              and not (Path(generator).expanduser() / GENERATOR_FILE).is_file()):
            found.append((self.generator_folder.edit, f"No {GENERATOR_FILE} in {generator}"))
        data = params.get("data")
        if data and self._check_paths and not Path(data).expanduser().is_dir():
            found.append((self.sampler.widget("data").edit, f"Dataset folder not found: {data}"))
        return found or self.sampler.problems(params)
