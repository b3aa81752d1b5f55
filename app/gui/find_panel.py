"""The Find dock: a find box for classes typed by name, "find similar" for the box drawn last, the phrasings
table of the dataset's classes, and the images with hits ranked by their best box.

Widgets only: the controller (app.gui.features.open_set) runs the searches and fills the list.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

PHRASING_SEPARATOR = ";"


class FindPanel(QWidget):
    hit_chosen = Signal(str)  # the key of an image picked in the hits list

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("find: rolled-in scale, scratches   (names or descriptions, comma-separated)")
        self.find_button = QPushButton("Find")
        self.similar_button = QPushButton("Find similar to the box drawn last")
        self.similar_button.setToolTip("Draw a box on a defect (Annotate dock), then search every image of the "
                                       "dataset for regions like it")
        self.phrasings_button = QPushButton("Phrasings…")
        self.phrasings_button.setToolTip("How each class is described when it is searched for by name")
        self.status = QLabel("Make an open-set detector the active model, then type what to find.")
        self.status.setWordWrap(True)
        self.hits = QListWidget()
        self.hits.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.hits.currentItemChanged.connect(self._on_item)

        row = QHBoxLayout()
        row.addWidget(self.find_edit, 1)
        row.addWidget(self.find_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.similar_button)
        buttons.addWidget(self.phrasings_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(row)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.hits, 1)

    def set_hits(self, hits: list[tuple[str, str, float, int]]) -> None:
        """(key, shown name, best score, boxes at the threshold) per image with a hit, best first."""
        self.hits.blockSignals(True)
        self.hits.clear()
        for key, name, score, n in hits:
            item = QListWidgetItem(f"{score:.3f}  {name}  ({n} {'box' if n == 1 else 'boxes'})")
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.hits.addItem(item)
        self.hits.blockSignals(False)

    def _on_item(self, item: QListWidgetItem | None, _previous: QListWidgetItem | None) -> None:
        if item is not None:
            self.hit_chosen.emit(str(item.data(Qt.ItemDataRole.UserRole)))


class PhrasingsDialog(QDialog):
    """One row per class: its name and its phrasings, separated by PHRASING_SEPARATOR; rows may be added."""

    def __init__(self, prompts: dict[str, list[str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Class phrasings")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["class", f"phrasings ({PHRASING_SEPARATOR}-separated)"])
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        for name, phrasings in prompts.items():
            self.add_row(name, phrasings)
        add = QPushButton("Add class")
        add.clicked.connect(lambda: self.add_row("", []))
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        bottom = QHBoxLayout()
        bottom.addWidget(add)
        bottom.addStretch(1)
        bottom.addWidget(box)
        layout.addLayout(bottom)
        self.resize(640, 360)

    def add_row(self, name: str, phrasings: list[str]) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        self.table.setItem(r, 0, QTableWidgetItem(name))
        self.table.setItem(r, 1, QTableWidgetItem(f"{PHRASING_SEPARATOR} ".join(phrasings)))

    def prompts(self) -> dict[str, list[str]]:
        """The table as prompts: rows without a name are dropped; a class without phrasings is searched by name."""
        out: dict[str, list[str]] = {}
        for r in range(self.table.rowCount()):
            name_item, text_item = self.table.item(r, 0), self.table.item(r, 1)
            name = name_item.text().strip() if name_item else ""
            if not name:
                continue
            text = text_item.text() if text_item else ""
            phrasings = [t.strip() for t in text.split(PHRASING_SEPARATOR) if t.strip()]
            out[name] = phrasings or [name]
        return out
