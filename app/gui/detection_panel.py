"""The Detect dock: the score threshold (slider + spin box), the boxes of the shown image with their outcome against
the labels, the counts for the image and the dataset, the accept-as-annotations buttons, and the metrics tab.

Widgets only: the controller (app.gui.features.detection) decides what the rows and counts say.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.detection_metrics import DetectionMetricsView

SLIDER_STEPS = 1000  # the slider's resolution over 0..1; the spin box holds the exact value


class DetectionPanel(QWidget):
    threshold_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0.0, 1.0)
        self.spin.setDecimals(3)
        self.spin.setSingleStep(0.01)
        self.reset_button = QPushButton("Model's threshold")
        self.reset_button.setToolTip("Back to the threshold the detector was published with")
        self.image_counts = QLabel("")
        self.dataset_counts = QLabel("Model ▸ Detect defects runs the active detector on the open dataset.")
        self.dataset_counts.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "score", "against the labels"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.accept_selected_button = QPushButton("Accept selected")
        self.accept_image_button = QPushButton("Accept all on this image")
        self.accept_dataset_button = QPushButton("Accept all ≥ threshold on the dataset")
        for button, tip in ((self.accept_selected_button, "the selected boxes become annotations of this image"),
                            (self.accept_image_button, "every box at or above the threshold on this image"),
                            (self.accept_dataset_button, "auto-label: every box at or above the threshold on "
                                                         "every image")):
            button.setToolTip(tip + " (a box already annotated is not added twice)")
        self.metrics = DetectionMetricsView()

        top = QHBoxLayout()
        top.addWidget(QLabel("Score threshold"))
        top.addWidget(self.slider, 1)
        top.addWidget(self.spin)
        top.addWidget(self.reset_button)
        buttons = QHBoxLayout()
        for b in (self.accept_selected_button, self.accept_image_button, self.accept_dataset_button):
            buttons.addWidget(b)
        page = QWidget()
        col = QVBoxLayout(page)
        col.addLayout(top)
        col.addWidget(self.image_counts)
        col.addWidget(self.dataset_counts)
        col.addWidget(self.table, 1)
        col.addLayout(buttons)
        self.tabs = QTabWidget()
        self.tabs.addTab(page, "Boxes")
        self.tabs.addTab(self.metrics, "Metrics")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

        self.slider.valueChanged.connect(lambda v: self._set(v / SLIDER_STEPS))
        self.spin.valueChanged.connect(self._set)

    def _set(self, value: float) -> None:
        # Each widget follows the other without echoing back; the spin box keeps the exact value.
        for widget, shown in ((self.slider, round(value * SLIDER_STEPS)), (self.spin, value)):
            widget.blockSignals(True)
            widget.setValue(shown)
            widget.blockSignals(False)
        self.threshold_changed.emit(float(self.spin.value()))

    def set_threshold(self, value: float) -> None:
        """Move both widgets (emits threshold_changed once)."""
        self._set(float(value))

    def threshold(self) -> float:
        return float(self.spin.value())

    def set_rows(self, rows: list[tuple[str, float, str, tuple[int, int, int]]]) -> None:
        """(class, score, outcome text, colour) per box of the shown image."""
        self.table.setRowCount(len(rows))
        for r, (name, score, outcome, color) in enumerate(rows):
            cells = (QTableWidgetItem(name), QTableWidgetItem(f"{score:.3f}"), QTableWidgetItem(outcome))
            cells[2].setForeground(QColor(*color))
            for c, cell in enumerate(cells):
                self.table.setItem(r, c, cell)

    def selected_rows(self) -> list[int]:
        return sorted({i.row() for i in self.table.selectedIndexes()})
