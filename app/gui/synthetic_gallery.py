"""The gallery of a synthetic set: one thumbnail per sample (the synthetic image with its mask outlined, its defect
type under it) and a keep / reject toggle each (the item's check box: ticked = keep), plus "reject all of a type",
"reject selected" and "keep all"; Apply asks the owner (app.gui.features.synthesis) to remove the rejected ones.

The widget shows and collects; the thumbnails are rendered off the GUI thread by `render_thumbnail` (numpy + OpenCV)
and handed in with `set_thumbnail`. A list view in icon mode keeps hundreds of samples cheap to show and scroll.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.datasets.imageio import read_mask, read_preview

THUMB = 160  # longest side of a thumbnail, pixels
OUTLINE_RGB = (255, 215, 0)  # the mask's outline: yellow stands out on grey parts and is not the "rejected" red
REJECTED_BRUSH = QBrush(QColor(200, 40, 40, 110))
REJECTED_SUFFIX = " (rejected)"  # said in words too, not only by the tint
IMAGE_ROLE = Qt.ItemDataRole.UserRole  # the sample's image path relative to the set (its name in the manifest)
TYPE_ROLE = Qt.ItemDataRole.UserRole + 1
EMPTY_TEXT = "No synthetic set yet: Model ▸ Synthesize defects… makes one."


@dataclass(frozen=True)
class GalleryItem:
    image: str  # relative to the set, as synthetic.json names it
    mask: str
    type: str
    donor: str = ""


def render_thumbnail(folder: Path, item: GalleryItem, size: int = THUMB) -> np.ndarray:
    """The sample's image at thumbnail size (RGB uint8) with its mask's outline drawn on it. Runs on a pool thread;
    ImageReadError names the file that cannot be read."""
    image = np.ascontiguousarray(read_preview(folder / item.image, size))
    mask = read_mask(folder / item.mask)
    h, w = image.shape[:2]
    # Area-resampled then thresholded: a thin crack keeps a visible outline at thumbnail scale.
    small = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) > 60
    contours, _ = cv2.findContours(small.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = image.copy()
    cv2.drawContours(out, contours, -1, OUTLINE_RGB, max(1, size // 100))
    return out


def _pixmap(rgb: np.ndarray) -> QPixmap:
    h, w = rgb.shape[:2]
    data = np.ascontiguousarray(rgb)
    return QPixmap.fromImage(QImage(data.data, w, h, data.strides[0], QImage.Format.Format_RGB888).copy())


class SyntheticGallery(QWidget):
    apply_requested = Signal()
    changed = Signal()  # a keep / reject toggle moved

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder: Path | None = None
        self.header = QLabel(EMPTY_TEXT)
        self.header.setWordWrap(True)
        # The set's folder is what the user passes to training: it must be selectable to copy.
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setGridSize(QSize(THUMB + 24, THUMB + 44))
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setWordWrap(True)
        self.list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.type_box = QComboBox()
        self.reject_type_button = QPushButton("Reject all of this type")
        self.reject_selected_button = QPushButton("Reject selected")
        self.keep_all_button = QPushButton("Keep all")
        self.count_label = QLabel()
        self.apply_button = QPushButton("Apply: remove the rejected samples")
        tools = QHBoxLayout()
        tools.addWidget(QLabel("Type"))
        tools.addWidget(self.type_box)
        tools.addWidget(self.reject_type_button)
        tools.addWidget(self.reject_selected_button)
        tools.addWidget(self.keep_all_button)
        tools.addStretch(1)
        tools.addWidget(self.count_label)
        tools.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addLayout(tools)
        layout.addWidget(self.list, 1)
        self.reject_type_button.clicked.connect(lambda: self.reject_type(self.type_box.currentText()))
        self.reject_selected_button.clicked.connect(self.reject_selected)
        self.keep_all_button.clicked.connect(self.keep_all)
        self.apply_button.clicked.connect(self.apply_requested)
        self.list.itemChanged.connect(self._on_item_changed)
        self._busy = False
        self._items: dict[str, QListWidgetItem] = {}
        self._update_controls()

    # ----------------------------------------------------------------- content
    def set_items(self, folder: Path, items: list[GalleryItem], header: str) -> None:
        """Show a set: every item kept until the user rejects it."""
        self.folder = folder
        self.header.setText(header)
        self.list.blockSignals(True)
        self.list.clear()
        self._items = {}
        blank = QPixmap(THUMB, THUMB)
        blank.fill(QColor(90, 90, 90))
        for entry in items:
            item = QListWidgetItem(QIcon(blank), entry.type)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            item.setData(IMAGE_ROLE, entry.image)
            item.setData(TYPE_ROLE, entry.type)
            donor = f"\ndonor: {entry.donor}" if entry.donor else ""
            item.setToolTip(f"{entry.image}\nmask: {entry.mask}{donor}\nticked: keep, unticked: reject")
            self.list.addItem(item)
            self._items[entry.image] = item
        self.list.blockSignals(False)
        types = sorted({entry.type for entry in items})
        self.type_box.clear()
        self.type_box.addItems(types)
        self._update_controls()

    def clear_set(self, header: str = EMPTY_TEXT) -> None:
        self.set_items(Path(), [], header)
        self.folder = None
        self._update_controls()

    def set_thumbnail(self, image: str, rgb: np.ndarray) -> None:
        item = self._items.get(image)
        if item is not None:
            item.setIcon(QIcon(_pixmap(rgb)))

    def set_unreadable(self, image: str, reason: str) -> None:
        """A sample whose files cannot be read: said on the item (rejecting it is then the obvious choice)."""
        item = self._items.get(image)
        if item is not None:
            item.setText(f"{item.data(TYPE_ROLE)} (unreadable)")
            item.setToolTip(f"{image}: {reason}")

    def set_header(self, text: str) -> None:
        self.header.setText(text)

    def set_busy(self, busy: bool) -> None:
        """While the owner applies the rejections nothing can be toggled or applied twice."""
        self._busy = busy
        self._update_controls()

    # ----------------------------------------------------------------- what the user decided
    def images(self) -> list[str]:
        return list(self._items)

    def is_kept(self, image: str) -> bool:
        return self._items[image].checkState() == Qt.CheckState.Checked

    def set_kept(self, image: str, keep: bool) -> None:
        self._items[image].setCheckState(Qt.CheckState.Checked if keep else Qt.CheckState.Unchecked)

    def rejected(self) -> list[str]:
        return [image for image, item in self._items.items() if item.checkState() != Qt.CheckState.Checked]

    def reject_type(self, defect_type: str) -> None:
        for item in self._items.values():
            if item.data(TYPE_ROLE) == defect_type:
                item.setCheckState(Qt.CheckState.Unchecked)

    def reject_selected(self) -> None:
        for item in self.list.selectedItems():
            item.setCheckState(Qt.CheckState.Unchecked)

    def keep_all(self) -> None:
        for item in self._items.values():
            item.setCheckState(Qt.CheckState.Checked)

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        rejected = item.checkState() != Qt.CheckState.Checked
        self.list.blockSignals(True)  # tint and text are changes of the item too: not another toggle
        item.setBackground(REJECTED_BRUSH if rejected else QBrush())
        text = item.text().removesuffix(REJECTED_SUFFIX)
        item.setText(text + REJECTED_SUFFIX if rejected else text)
        self.list.blockSignals(False)
        self._update_controls()
        self.changed.emit()

    def _update_controls(self) -> None:
        n, rejected = len(self._items), len(self.rejected())
        self.count_label.setText(f"{n - rejected} kept, {rejected} rejected" if n else "")
        enabled = bool(n) and not self._busy
        for widget in (self.list, self.type_box, self.reject_type_button, self.reject_selected_button,
                       self.keep_all_button):
            widget.setEnabled(enabled)
        self.apply_button.setEnabled(enabled)
