"""The dataset thumbnail browser: a virtualised grid of every image with its score, verdict and load problems.

Three layers, each usable alone:

* `BrowserModel` holds one row per image in flat Python lists (no per-row objects beyond the Sample) and asks
  the `ThumbnailCache` for a thumbnail only when Qt asks for the DecorationRole of a row, which a QListView
  does only for the rows it paints. That is what keeps 10,000+ images cheap.
* `BrowserFilter` filters by split / label / defect type / verdict / score range / file name and sorts by
  score or name. Rows are stored in natural name order, so "sort by name" costs nothing.
* `BrowserWidget` is the filter bar + QListView (IconMode, uniform sizes, batched layout) + a delegate that
  paints each cell; it reports the current image as `current_changed(key)`.

Load issues: an issue whose path is a sample's image marks that row with a "!" badge and the reason. An issue
for an image file that is not a sample (a reader skipped it because its header is unreadable) is listed too,
as an extra row with label "unknown" and the badge, so the user can see which file is broken instead of it
silently missing. Issues about masks (reason starting with "mask") and about folders or non-image files are
not rows: they belong to the load report, not to the image grid. A thumbnail that fails to decode later
gets the same badge with the decoder's reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PySide6.QtCore import (
    QEvent,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QColor, QFont, QFontMetrics, QHelpEvent, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from app.gui.browser_model import (  # noqa: F401  (re-exported: the browser's model, filter and roles)
    _DECORATION,
    _DISPLAY,
    NG,
    OK,
    SORT_NAME,
    SORT_SCORE,
    UNREVIEWED,
    UNSURE,
    BrowserFilter,
    BrowserModel,
    DefectTypeRole,
    IssueRole,
    KeyRole,
    LabelRole,
    PathRole,
    ScoreRole,
    SplitRole,
    VerdictRole,
    _sample_keys,
)
from app.gui.thumbs import ThumbnailCache
from engine.datasets.types import LoadIssue, Sample

# ---------------------------------------------------------------------------------------------------------------
# Delegate

_VERDICT_STYLE = {
    OK: ("OK", QColor(46, 160, 67)),
    NG: ("NG", QColor(218, 54, 51)),
    UNSURE: ("UNSURE", QColor(212, 160, 23)),
}
_BADGE = QColor(220, 38, 38)
_PAD = 6
_BADGE_D = 18


class ThumbDelegate(QStyledItemDelegate):
    """Paints one cell: thumbnail, file name, defect type, score and verdict chip, and the "!" problem badge."""

    def __init__(self, thumb_size: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thumb = thumb_size

    def cell_size(self, font: QFont) -> QSize:
        line = QFontMetrics(font).height()
        return QSize(self._thumb + 2 * _PAD, _PAD + self._thumb + 4 + 3 * line + _PAD)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        # Constant on purpose: with uniform item sizes Qt asks once, and never for off-screen rows' data.
        return self.cell_size(option.font)

    def _thumb_rect(self, cell: QRect) -> QRect:
        return QRect(cell.x() + _PAD, cell.y() + _PAD, self._thumb, self._thumb)

    def badge_rect(self, cell: QRect) -> QRect:
        t = self._thumb_rect(cell)
        return QRect(t.right() - _BADGE_D - 3, t.top() + 3, _BADGE_D, _BADGE_D)

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        cell: QRect = option.rect
        pal = option.palette
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if selected:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(pal.highlight())
            painter.drawRoundedRect(cell.adjusted(1, 1, -1, -1), 6, 6)
        elif option.state & QStyle.StateFlag.State_MouseOver:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(pal.midlight())
            painter.drawRoundedRect(cell.adjusted(1, 1, -1, -1), 6, 6)

        trect = self._thumb_rect(cell)
        pix = index.data(_DECORATION)
        if isinstance(pix, QPixmap) and not pix.isNull():
            if pix.width() > trect.width() or pix.height() > trect.height():
                pix = pix.scaled(trect.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                 Qt.TransformationMode.SmoothTransformation)
            x = trect.x() + (trect.width() - pix.width()) // 2
            y = trect.y() + (trect.height() - pix.height()) // 2
            painter.drawPixmap(x, y, pix)

        text_pen = pal.highlightedText().color() if selected else pal.text().color()
        muted = QColor(text_pen)
        muted.setAlpha(160)
        fm = QFontMetrics(option.font)
        line = fm.height()
        y = trect.bottom() + 5
        width = cell.width() - 2 * _PAD
        painter.setPen(text_pen)
        name = fm.elidedText(str(index.data(_DISPLAY) or ""), Qt.TextElideMode.ElideMiddle, width)
        painter.drawText(QRect(cell.x() + _PAD, y, width, line), Qt.AlignmentFlag.AlignLeft, name)

        small = QFont(option.font)
        small.setPointSizeF(max(6.0, option.font.pointSizeF() * 0.88))
        painter.setFont(small)
        sfm = QFontMetrics(small)
        defect = index.data(DefectTypeRole) or index.data(LabelRole) or ""
        split = index.data(SplitRole) or ""
        sub = f"{defect} · {split}" if split and split != "unspecified" else str(defect)
        painter.setPen(muted)
        painter.drawText(QRect(cell.x() + _PAD, y + line, width, line), Qt.AlignmentFlag.AlignLeft,
                         sfm.elidedText(sub, Qt.TextElideMode.ElideRight, width))

        score = index.data(ScoreRole)
        painter.setPen(text_pen)
        row3 = QRect(cell.x() + _PAD, y + 2 * line, width, line)
        painter.drawText(row3, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         "—" if score is None else f"{score:.3f}")
        verdict = index.data(VerdictRole)
        if verdict in _VERDICT_STYLE:
            self._chip(painter, row3, sfm, *_VERDICT_STYLE[verdict])

        if index.data(IssueRole):
            self._badge(painter, self.badge_rect(cell))
        painter.restore()

    @staticmethod
    def _chip(painter: QPainter, row: QRect, fm: QFontMetrics, text: str, colour: QColor) -> None:
        w = fm.horizontalAdvance(text) + 10
        chip = QRect(row.right() - w, row.y() + 1, w, row.height() - 2)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour)
        painter.drawRoundedRect(chip, chip.height() / 2, chip.height() / 2)
        painter.setPen(QColor("white"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)

    @staticmethod
    def _badge(painter: QPainter, rect: QRect) -> None:
        painter.setPen(QColor("white"))
        painter.setBrush(_BADGE)
        painter.drawEllipse(rect)
        font = QFont(painter.font())
        font.setBold(True)
        painter.setFont(font)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "!")

    def helpEvent(
        self,
        event: QHelpEvent,
        view: QAbstractItemView,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> bool:
        # Hovering the badge shows just the reason; anywhere else the model's full tooltip.
        if event.type() == QEvent.Type.ToolTip and index.isValid():
            issue = index.data(IssueRole)
            if issue and self.badge_rect(option.rect).contains(event.pos()):
                QToolTip.showText(event.globalPos(), f"Problem: {issue}", view)
                return True
        return super().helpEvent(event, view, option, index)


# ---------------------------------------------------------------------------------------------------------------
# Widget


class _OptionalSpin(QDoubleSpinBox):
    """A score bound whose lowest value means "no bound" (shown as "any")."""

    NONE = -1.0

    def __init__(self, prefix: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setRange(self.NONE, 1_000_000.0)
        self.setDecimals(3)
        self.setSingleStep(0.05)
        self.setSpecialValueText(f"{prefix} any")
        self.setPrefix(f"{prefix} ")
        self.setValue(self.NONE)
        self.setKeyboardTracking(False)  # filter when the user finishes typing, not at every keystroke

    def bound(self) -> float | None:
        return None if self.value() <= self.NONE else self.value()

    def set_bound(self, value: float | None) -> None:
        self.setValue(self.NONE if value is None else value)

    def stepBy(self, steps: int) -> None:
        # Stepping up from "any" starts at 0, not at the sentinel + one step.
        if self.value() <= self.NONE and steps > 0:
            self.setValue(0.0)
            return
        super().stepBy(steps)


class BrowserWidget(QWidget):
    """Filter bar + virtualised thumbnail grid. Emits `current_changed(key)` ("" when nothing is current)."""

    current_changed = Signal(str)

    def __init__(
        self,
        model: BrowserModel | None = None,
        cache: ThumbnailCache | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.model = model if model is not None else BrowserModel(cache, parent=self)
        self.cache = self.model.cache
        self.proxy = BrowserFilter(self)
        self.proxy.setSourceModel(self.model)
        self._last_key = ""

        self.split_combo = self._combo("All splits")
        self.label_combo = self._combo("All labels")
        self.defect_combo = self._combo("All defect types")
        self.verdict_combo = self._combo("Any verdict")
        for text, value in (("Unreviewed", UNREVIEWED), ("OK", OK), ("NG", NG), ("Unsure", UNSURE)):
            self.verdict_combo.addItem(text, value)
        self.score_min = _OptionalSpin("≥")
        self.score_max = _OptionalSpin("≤")
        self.sort_combo = QComboBox()
        self.sort_combo.addItem("Sort: name", SORT_NAME)
        self.sort_combo.addItem("Sort: score ↓", SORT_SCORE)
        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search file name…")
        self.search_edit.setClearButtonEnabled(True)
        self.count_label = QLabel()

        self.view = QListView()
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setUniformItemSizes(True)
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(256)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setWrapping(True)
        self.view.setSpacing(2)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setMouseTracking(True)  # hover highlight
        self.view.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.delegate = ThumbDelegate(self.cache.size, self.view)
        self.view.setItemDelegate(self.delegate)
        self.view.setGridSize(self.delegate.cell_size(self.view.font()) + QSize(4, 4))
        self.view.setModel(self.proxy)

        # Two rows, so the browser still fits a narrow side panel: what to show, then how to order/find it.
        row1 = QHBoxLayout()
        for w in (self.split_combo, self.label_combo, self.defect_combo, self.verdict_combo):
            row1.addWidget(w)
        row1.addStretch(1)
        row2 = QHBoxLayout()
        for w in (self.score_min, self.score_max, self.sort_combo):
            row2.addWidget(w)
        row2.addWidget(self.search_edit, 1)
        row2.addWidget(self.count_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(row1)
        layout.addLayout(row2)
        layout.addWidget(self.view, 1)

        self.split_combo.currentIndexChanged.connect(lambda: self.proxy.set_split(self.split_combo.currentData()))
        self.label_combo.currentIndexChanged.connect(lambda: self.proxy.set_label(self.label_combo.currentData()))
        self.defect_combo.currentIndexChanged.connect(
            lambda: self.proxy.set_defect_type(self.defect_combo.currentData()))
        self.verdict_combo.currentIndexChanged.connect(
            lambda: self.proxy.set_verdict(self.verdict_combo.currentData()))
        self.score_min.valueChanged.connect(self._apply_score_range)
        self.score_max.valueChanged.connect(self._apply_score_range)
        self.sort_combo.currentIndexChanged.connect(
            lambda: self.proxy.set_sort_mode(self.sort_combo.currentData()))
        self.search_edit.textChanged.connect(self.proxy.set_text)
        self.view.selectionModel().currentChanged.connect(self._on_current_changed)
        for sig in (self.proxy.modelReset, self.proxy.layoutChanged, self.proxy.rowsInserted,
                    self.proxy.rowsRemoved):
            sig.connect(self._update_count)
        self.model.modelReset.connect(self._refresh_choices)

        # After scrolling settles, queued thumbnails of rows that left the screen are dropped, not decoded.
        self._prune = QTimer(self)
        self._prune.setSingleShot(True)
        self._prune.setInterval(80)
        self._prune.timeout.connect(self._prune_requests)
        self.view.verticalScrollBar().valueChanged.connect(self._prune.start)
        for sig in (self.proxy.layoutChanged, self.proxy.rowsRemoved, self.proxy.modelReset):
            sig.connect(self._prune.start)

        self._refresh_choices()
        self._update_count()

    # ---- public API ----------------------------------------------------------------------------------------

    def set_dataset(self, root: str | Path, samples: Sequence[Sample], issues: Sequence[LoadIssue] = ()) -> None:
        self.model.set_dataset(root, samples, issues)

    def set_sort_mode(self, mode: str) -> None:
        self.sort_combo.setCurrentIndex(self.sort_combo.findData(mode))

    def current_key(self) -> str | None:
        idx = self.view.currentIndex()
        return idx.data(KeyRole) if idx.isValid() else None

    def select_key(self, key: str) -> bool:
        """Make `key` current and scroll to it; False when it is unknown or hidden by the filter."""
        row = self.proxy.row_for_key(key)
        if row < 0:
            return False
        self._select_row(row)
        return True

    def select_next(self) -> str | None:
        """Move to the next image in filtered order (the first when none is current); returns the new key."""
        return self._step(+1)

    def select_previous(self) -> str | None:
        return self._step(-1)

    def visible_keys(self) -> list[str]:
        """Keys that pass the filter, in displayed order."""
        return self.proxy.keys()

    def keys_on_screen(self) -> list[str]:
        """Keys of the cells currently inside the viewport, in displayed order."""
        return [self.proxy.index(r, 0).data(KeyRole) for r in self._rows_on_screen()]

    # ---- internals ---------------------------------------------------------------------------------------------

    @staticmethod
    def _combo(all_text: str) -> QComboBox:
        combo = QComboBox()
        combo.addItem(all_text, None)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        return combo

    def _refresh_choices(self) -> None:
        """Offer only the splits / labels / defect types present in the dataset; keep a still-valid choice."""
        m = self.model
        splits = sorted({s.split for s in m._samples})
        labels = sorted({s.label for s in m._samples})
        defects = sorted({s.defect_type for s in m._samples if s.defect_type})
        for combo, values in ((self.split_combo, splits), (self.label_combo, labels),
                              (self.defect_combo, defects)):
            current = combo.currentData()
            combo.blockSignals(True)
            while combo.count() > 1:
                combo.removeItem(1)
            for v in values:
                combo.addItem(v, v)
            combo.setCurrentIndex(max(0, combo.findData(current)) if current is not None else 0)
            combo.blockSignals(False)
        self.proxy.set_split(self.split_combo.currentData())
        self.proxy.set_label(self.label_combo.currentData())
        self.proxy.set_defect_type(self.defect_combo.currentData())
        self._update_count()

    def _apply_score_range(self) -> None:
        self.proxy.set_score_range(self.score_min.bound(), self.score_max.bound())

    def _update_count(self) -> None:
        self.count_label.setText(f"{self.proxy.rowCount():,} of {self.model.rowCount():,} images")

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        key = current.data(KeyRole) if current.isValid() else ""
        if key != self._last_key:
            self._last_key = key
            self.current_changed.emit(key)

    def _select_row(self, row: int) -> None:
        idx = self.proxy.index(row, 0)
        self.view.selectionModel().setCurrentIndex(idx, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.view.scrollTo(idx)

    def _step(self, delta: int) -> str | None:
        n = self.proxy.rowCount()
        if n == 0:
            return None
        cur = self.view.currentIndex()
        row = (0 if delta > 0 else n - 1) if not cur.isValid() else min(max(cur.row() + delta, 0), n - 1)
        self._select_row(row)
        return self.current_key()

    def _rows_on_screen(self) -> list[int]:
        # Probe the viewport on a half-cell lattice: O(cells on screen), independent of the dataset size.
        vp = self.view.viewport().rect()
        grid = self.view.gridSize()
        sx, sy = max(8, grid.width() // 2), max(8, grid.height() // 2)
        rows: set[int] = set()
        for y in range(vp.top() + 2, vp.bottom(), sy):
            for x in range(vp.left() + 2, vp.right(), sx):
                idx = self.view.indexAt(QPoint(x, y))
                if idx.isValid():
                    rows.add(idx.row())
        return sorted(rows)

    def _prune_requests(self) -> None:
        paths: Iterable[str] = (self.proxy.index(r, 0).data(PathRole) for r in self._rows_on_screen())
        self.cache.retain(list(paths))
