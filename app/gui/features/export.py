"""File ▸ Export annotated dataset…: the open dataset with the annotations drawn or accepted in the workbench as
its labels (app.annotate.document.annotated_dataset), written in any format of the writers' registry
(engine.datasets.writers), so the labels leave the workbench in a form other tools and `defectscope train` read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from app.gui.features.base import Feature, MenuEntry
from engine.datasets.export_job import ExportReport
from engine.datasets.writers import writer_formats

DEFAULT_FORMAT = "coco"


class ExportDialog(QDialog):
    """A format (from the writers' registry) and an output folder."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export annotated dataset")
        self.format_box = QComboBox()
        for name, writer in sorted(writer_formats().items()):
            self.format_box.addItem(name, name)
            self.format_box.setItemData(self.format_box.count() - 1, writer.description,
                                        Qt.ItemDataRole.ToolTipRole)
        self.format_box.setCurrentText(DEFAULT_FORMAT)
        self.out_edit = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.out_edit, 1)
        row.addWidget(browse)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Format", self.format_box)
        form.addRow("Into folder", row)
        form.addRow(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder")
        if folder:
            self.out_edit.setText(folder)


class ExportFeature(Feature):
    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&File", "Export &annotated dataset…", self.choose_export, separator_before=True)]

    def choose_export(self) -> None:
        if self.window.dataset is None:
            self.window.show_error("Open a dataset first.")
            return
        dialog = ExportDialog(self.window)
        if dialog.exec() and dialog.out_edit.text().strip():
            self.export(Path(dialog.out_edit.text().strip()), dialog.format_box.currentData())

    def export(self, out: Path, fmt: str = DEFAULT_FORMAT,
               on_done: Callable[[ExportReport], None] | None = None) -> None:
        """Write the open dataset with the workbench's annotations into `out` (an empty or new folder) in `fmt`,
        off the GUI thread; the images are copied, so the export stands on its own."""
        from app.annotate.document import annotated_dataset
        from engine.datasets.writers import export_dataset

        w = self.window
        ds, store = w.dataset, w.annotation.controller.store
        if ds is None:
            w.show_error("Open a dataset first.")
            return

        def run() -> ExportReport:
            labelled = annotated_dataset(ds, store) if store is not None else ds
            return export_dataset(labelled, out, fmt)

        def done(report: ExportReport) -> None:
            w.status_message.emit(f"Exported {report.summary()}")
            if report.skipped:
                w.show_banner(f"Export: {len(report.skipped)} images skipped, e.g. {report.skipped[0]}", "warning",
                              tag="export")
            if on_done is not None:
                on_done(report)

        def failed(message: str) -> None:
            w.show_error(f"Export failed: {message}")

        w.status_message.emit(f"Exporting {ds.root.name} as {fmt} into {out}…")
        w.background(run, done, failed)

