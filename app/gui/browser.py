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

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QEvent,
    QItemSelectionModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QSize,
    QSortFilterProxyModel,
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

from app.gui.thumbs import ThumbnailCache, thumb_key
from app.keys import sample_key
from engine.datasets.imageio import IMAGE_SUFFIXES
from engine.datasets.types import UNKNOWN, LoadIssue, Sample

OK = "ok"
NG = "ng"
UNSURE = "unsure"
VERDICTS = (OK, NG, UNSURE)
UNREVIEWED = "unreviewed"  # a verdict filter value: rows without a verdict

SORT_NAME = "name"
SORT_SCORE = "score"

_USER = int(Qt.ItemDataRole.UserRole)
KeyRole = _USER + 1
SampleRole = _USER + 2
ScoreRole = _USER + 3
VerdictRole = _USER + 4
SplitRole = _USER + 5
LabelRole = _USER + 6
DefectTypeRole = _USER + 7
IssueRole = _USER + 8
PathRole = _USER + 9
# Listed in every dataChanged that can change what the filter or the sort sees: the proxy re-evaluates rows
# only for roles it watches, so thumbnail arrivals (DecorationRole only) never cost a re-filter.
FilterRole = _USER + 50

_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_DECORATION = int(Qt.ItemDataRole.DecorationRole)
_TOOLTIP = int(Qt.ItemDataRole.ToolTipRole)

_DIGITS = re.compile(r"(\d+)")


def _natural(text: str) -> tuple:
    """Sort key where "img2" < "img10"; str and int parts alternate, so tuples always compare cleanly."""
    parts = _DIGITS.split(text.casefold())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _sample_keys(root: Path, samples: Sequence[Sample]) -> list[str]:
    """Exactly `app.keys.sample_key` for every sample, ~10x faster on big datasets.

    `Path.resolve()` per file is a chain of syscalls; resolving each parent folder once and appending the
    name is equivalent unless the file itself is a symlink (or a "." / ".." name), which falls back.
    """
    root_res = os.fspath(Path(root).resolve())
    prefix = root_res if root_res.endswith(os.sep) else root_res + os.sep
    parents: dict[str, str] = {}
    keys: list[str] = []
    for s in samples:
        p = os.fspath(s.image_path)
        parent, name = os.path.split(p)
        if name in ("", ".", "..") or os.path.islink(p):
            keys.append(sample_key(root, s))
            continue
        res_parent = parents.get(parent)
        if res_parent is None:
            res_parent = parents[parent] = os.fspath(Path(parent or ".").resolve())
        full = os.path.join(res_parent, name)
        if full.startswith(prefix):
            rel = full[len(prefix):]
            keys.append(rel.replace(os.sep, "/") if os.sep != "/" else rel)
        else:  # outside the root, or a case-insensitive match on Windows: let the reference decide
            keys.append(sample_key(root, s))
    return keys


def _clean_score(value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    return None if math.isnan(v) else v


def _clean_verdict(verdict: str | None) -> str | None:
    """Verdicts are stored lower-case; the engine writes "OK"/"NG", the review store "ok"/"ng"/"unsure"."""
    if verdict is None or verdict == "":
        return None
    v = verdict.lower()
    if v not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r} (expected one of {', '.join(VERDICTS)})")
    return v


# ---------------------------------------------------------------------------------------------------------------
# Model


class BrowserModel(QAbstractListModel):
    """One row per image of the open dataset, in natural order of the sample key or by score (set_order)."""

    def __init__(self, cache: ThumbnailCache | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cache = cache if cache is not None else ThumbnailCache(parent=self)
        self._cache.thumbnail_ready.connect(self._on_thumb_event)
        self._cache.failed.connect(self._on_thumb_event)
        self._root = Path()
        self._clear_rows()
        self._placeholder: QPixmap | None = None
        self._broken: QPixmap | None = None

    def _clear_rows(self) -> None:
        # Parallel lists: at 10k+ rows they are several times cheaper to build and scan than row objects.
        self._keys: list[str] = []
        self._samples: list[Sample] = []
        self._paths: list[str] = []  # thumbnail-cache keys (absolute paths)
        self._names: list[str] = []  # casefolded file names, for the text filter
        self._scores: list[float | None] = []
        self._verdicts: list[str | None] = []
        self._issues: list[str | None] = []
        self._row_of: dict[str, int] = {}
        self._rows_of_path: dict[str, list[int]] = {}
        self._natural_pos: list[int] = []  # each row's position in name order
        self._order_mode = SORT_NAME

    # ---- loading -------------------------------------------------------------------------------------------

    @property
    def cache(self) -> ThumbnailCache:
        return self._cache

    @property
    def root(self) -> Path:
        return self._root

    def set_dataset(self, root: str | Path, samples: Sequence[Sample], issues: Sequence[LoadIssue] = ()) -> None:
        """Replace every row (scores and verdicts are cleared; set them again for the new dataset)."""
        root = Path(root)
        by_path: dict[str, list[str]] = {}
        for issue in issues:
            by_path.setdefault(thumb_key(issue.path), []).append(issue.reason)
        sample_paths = [thumb_key(s.image_path) for s in samples]
        all_samples = list(samples)
        known = set(sample_paths)
        for path, reasons in by_path.items():
            if path not in known and self._is_unlisted_image(path, reasons):
                all_samples.append(Sample(Path(path), label=UNKNOWN))
                sample_paths.append(path)
        keys = _sample_keys(root, all_samples)
        order = sorted(range(len(keys)), key=lambda i: _natural(keys[i]))

        self.beginResetModel()
        self._cache.clear_errors()  # reopening retries files that failed before (they may have been fixed)
        self._root = root
        self._clear_rows()
        self._keys = [keys[i] for i in order]
        self._samples = [all_samples[i] for i in order]
        self._paths = [sample_paths[i] for i in order]
        self._names = [os.path.basename(p).casefold() for p in self._paths]
        n = len(order)
        self._scores = [None] * n
        self._verdicts = [None] * n
        self._issues = [("; ".join(by_path[p]) if p in by_path else None) for p in self._paths]
        self._natural_pos = list(range(n))
        self._index_rows()
        self.endResetModel()
        if self._order_mode == SORT_SCORE:
            self._apply_order()

    def _index_rows(self) -> None:
        self._row_of = {k: r for r, k in enumerate(self._keys)}
        self._rows_of_path = {}
        for r, p in enumerate(self._paths):
            self._rows_of_path.setdefault(p, []).append(r)

    def set_order(self, mode: str) -> None:
        """Order the rows themselves: SORT_NAME (natural key order) or SORT_SCORE (high first, unscored last).

        Reordering here (one numpy argsort and a layout change that keeps the selection) instead of sorting in
        the proxy matters at 10k rows: the proxy would call a Python lessThan ~130k times (~0.35 s, a visible
        freeze); this takes a few milliseconds.
        """
        if mode not in (SORT_NAME, SORT_SCORE):
            raise ValueError(f"unknown sort mode {mode!r}")
        self._order_mode = mode
        self._apply_order()

    def _apply_order(self) -> None:
        n = len(self._keys)
        if n == 0:
            return
        if self._order_mode == SORT_SCORE:
            scores = np.array([np.nan if v is None else v for v in self._scores], dtype=np.float64)
            # Descending score, unscored last, ties in name order: lexsort's last key is the primary one.
            order = np.lexsort((np.asarray(self._natural_pos), -np.nan_to_num(scores, nan=0.0), np.isnan(scores)))
        else:
            order = np.argsort(np.asarray(self._natural_pos), kind="stable")
        if np.array_equal(order, np.arange(n)):
            return
        self.layoutAboutToBeChanged.emit()
        persistent = self.persistentIndexList()
        new_row = np.empty(n, dtype=np.int64)
        new_row[order] = np.arange(n)
        for name in ("_keys", "_samples", "_paths", "_names", "_scores", "_verdicts", "_issues", "_natural_pos"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in order])
        self._index_rows()
        self.changePersistentIndexList(persistent, [self.index(int(new_row[i.row()])) for i in persistent])
        self.layoutChanged.emit()

    @staticmethod
    def _is_unlisted_image(path: str, reasons: list[str]) -> bool:
        if os.path.splitext(path)[1].lower() not in IMAGE_SUFFIXES:
            return False
        return not all(r.startswith("mask") for r in reasons)

    def set_scores(self, scores: Mapping[str, float | None]) -> None:
        """Replace all scores; rows whose key is missing from `scores` have none. Unknown keys are ignored."""
        self._scores = [_clean_score(scores.get(k)) for k in self._keys]
        self._all_changed([ScoreRole, FilterRole, _TOOLTIP])
        if self._order_mode == SORT_SCORE:
            self._apply_order()

    def set_verdicts(self, verdicts: Mapping[str, str | None]) -> None:
        """Replace all verdicts ("ok"/"ng"/"unsure", any case); missing keys are unreviewed."""
        cleaned = {k: _clean_verdict(v) for k, v in verdicts.items()}  # validate before changing anything
        self._verdicts = [cleaned.get(k) for k in self._keys]
        self._all_changed([VerdictRole, FilterRole, _TOOLTIP])

    def set_verdict(self, key: str, verdict: str | None) -> None:
        """One row's verdict (None: unreviewed). Raises KeyError for an unknown key."""
        row = self._row_of[key]
        self._verdicts[row] = _clean_verdict(verdict)
        idx = self.index(row)
        self.dataChanged.emit(idx, idx, [VerdictRole, FilterRole, _TOOLTIP])

    def _all_changed(self, roles: list[int]) -> None:
        if self._keys:
            self.dataChanged.emit(self.index(0), self.index(len(self._keys) - 1), roles)

    # ---- lookups -------------------------------------------------------------------------------------------

    def row_for_key(self, key: str) -> int:
        """The source row of `key`, or -1."""
        return self._row_of.get(key, -1)

    def key_at(self, row: int) -> str:
        return self._keys[row]

    def sample_at(self, row: int) -> Sample:
        return self._samples[row]

    def score_of(self, key: str) -> float | None:
        return self._scores[self._row_of[key]]

    def verdict_of(self, key: str) -> str | None:
        return self._verdicts[self._row_of[key]]

    def issue_at(self, row: int) -> str | None:
        """The load issue, else the thumbnail failure, else None."""
        return self._issues[row] or self._cache.error(self._paths[row])

    def keys(self) -> list[str]:
        return list(self._keys)

    # ---- Qt model interface --------------------------------------------------------------------------------

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._keys)

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = _DISPLAY) -> object:
        if not index.isValid():
            return None
        r = index.row()
        role = int(role)
        if role == _DECORATION:
            return self._thumbnail(r)
        if role == _DISPLAY:
            return os.path.basename(self._paths[r])
        if role == KeyRole:
            return self._keys[r]
        if role == ScoreRole:
            return self._scores[r]
        if role == VerdictRole:
            return self._verdicts[r]
        if role == IssueRole:
            return self.issue_at(r)
        if role == SplitRole:
            return self._samples[r].split
        if role == LabelRole:
            return self._samples[r].label
        if role == DefectTypeRole:
            return self._samples[r].defect_type
        if role == SampleRole:
            return self._samples[r]
        if role == PathRole:
            return self._paths[r]
        if role == _TOOLTIP:
            return self._tooltip(r)
        return None

    def _thumbnail(self, row: int) -> QPixmap:
        # Called only for painted rows: this lazy request is what virtualises the decoding.
        path = self._paths[row]
        pix = self._cache.get(path)
        if pix is not None:
            return pix
        if self._cache.error(path) is not None:
            return self._broken_pixmap()
        self._cache.request(path)
        return self._placeholder_pixmap()

    def _tooltip(self, row: int) -> str:
        s = self._samples[row]
        kind = s.label if not s.defect_type or s.defect_type == s.label else f"{s.label} ({s.defect_type})"
        lines = [self._keys[row], f"{s.split} · {kind}"]
        if self._scores[row] is not None:
            lines.append(f"score {self._scores[row]:.3f}")
        if self._verdicts[row]:
            lines.append(f"verdict {self._verdicts[row].upper()}")
        issue = self.issue_at(row)
        if issue:
            lines.append(f"problem: {issue}")
        return "\n".join(lines)

    def _placeholder_pixmap(self) -> QPixmap:
        if self._placeholder is None:
            self._placeholder = _flat_pixmap(self._cache.size, QColor(70, 74, 80))
        return self._placeholder

    def _broken_pixmap(self) -> QPixmap:
        if self._broken is None:
            self._broken = _flat_pixmap(self._cache.size, QColor(60, 40, 40), cross=True)
        return self._broken

    def _on_thumb_event(self, path: str, _reason: str = "") -> None:
        for r in self._rows_of_path.get(path, ()):
            idx = self.index(r)
            self.dataChanged.emit(idx, idx, [_DECORATION, IssueRole, _TOOLTIP])


def _flat_pixmap(size: int, colour: QColor, cross: bool = False) -> QPixmap:
    pix = QPixmap(size, size)
    pix.fill(colour)
    if cross:  # a "broken image" look, so an undecodable file is obvious even without the badge
        p = QPainter(pix)
        p.setPen(QColor(150, 90, 90))
        p.drawLine(size // 4, size // 4, 3 * size // 4, 3 * size // 4)
        p.drawLine(3 * size // 4, size // 4, size // 4, 3 * size // 4)
        p.end()
    return pix


# ---------------------------------------------------------------------------------------------------------------
# Filter / sort


class BrowserFilter(QSortFilterProxyModel):
    """Filters and sorts a BrowserModel. All criteria default to "any"; rows are in name order by default."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._model: BrowserModel | None = None
        self.split: str | None = None
        self.label: str | None = None
        self.defect_type: str | None = None
        self.verdict: str | None = None  # one of VERDICTS, UNREVIEWED, or None for any
        self.score_min: float | None = None
        self.score_max: float | None = None
        self.text = ""
        self._sort_mode = SORT_NAME
        self.setFilterRole(FilterRole)
        self.setSortRole(FilterRole)
        self.setDynamicSortFilter(True)

    def setSourceModel(self, model: BrowserModel) -> None:  # type: ignore[override]
        if not isinstance(model, BrowserModel):
            raise TypeError("BrowserFilter filters a BrowserModel")
        self._model = model
        super().setSourceModel(model)
        self.set_sort_mode(self._sort_mode)

    # ---- criteria --------------------------------------------------------------------------------------------

    def set_split(self, split: str | None) -> None:
        self._change(split=split or None)

    def set_label(self, label: str | None) -> None:
        self._change(label=label or None)

    def set_defect_type(self, defect_type: str | None) -> None:
        self._change(defect_type=defect_type or None)

    def set_verdict(self, verdict: str | None) -> None:
        """None: any; "unreviewed": rows without a verdict; else "ok"/"ng"/"unsure"."""
        v = (verdict or "").lower() or None
        if v is not None and v != UNREVIEWED and v not in VERDICTS:
            raise ValueError(f"unknown verdict filter {verdict!r}")
        self._change(verdict=v)

    def set_score_range(self, score_min: float | None, score_max: float | None) -> None:
        """Inclusive bounds; None is open. With any bound set, rows without a score are hidden."""
        self._change(score_min=score_min, score_max=score_max)

    def set_text(self, text: str) -> None:
        """Case-insensitive substring of the file name."""
        self._change(text=text.strip().casefold())

    def clear_filters(self) -> None:
        self._change(split=None, label=None, defect_type=None, verdict=None, score_min=None, score_max=None,
                     text="")

    def _change(self, **criteria: object) -> None:
        if all(getattr(self, k) == v for k, v in criteria.items()):
            return  # unchanged: spare 10k filterAcceptsRow calls
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9; invalidateRowsFilter is deprecated there
            self.beginFilterChange()
            self._assign(criteria)
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._assign(criteria)
            self.invalidateRowsFilter()

    def _assign(self, criteria: Mapping[str, object]) -> None:
        for name, value in criteria.items():
            setattr(self, name, value)

    # ---- sorting ---------------------------------------------------------------------------------------------

    @property
    def sort_mode(self) -> str:
        return self._sort_mode

    def set_sort_mode(self, mode: str) -> None:
        """SORT_NAME (natural order of the key, the model's own order) or SORT_SCORE (high first, None last)."""
        if mode not in (SORT_NAME, SORT_SCORE):
            raise ValueError(f"unknown sort mode {mode!r}")
        self._sort_mode = mode
        # The model orders its own rows (see BrowserModel.set_order); the proxy keeps source order (column -1).
        self.sort(-1, Qt.SortOrder.AscendingOrder)
        if self._model is not None:
            self._model.set_order(mode)

    # ---- filtering -------------------------------------------------------------------------------------------

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        m = self._model
        if m is None:
            return True
        s = m._samples[source_row]
        if self.split is not None and s.split != self.split:
            return False
        if self.label is not None and s.label != self.label:
            return False
        if self.defect_type is not None and s.defect_type != self.defect_type:
            return False
        if self.verdict is not None:
            v = m._verdicts[source_row]
            if (v is not None) if self.verdict == UNREVIEWED else (v != self.verdict):
                return False
        if self.score_min is not None or self.score_max is not None:
            score = m._scores[source_row]
            if score is None:
                return False
            if self.score_min is not None and score < self.score_min:
                return False
            if self.score_max is not None and score > self.score_max:
                return False
        return not self.text or self.text in m._names[source_row]

    # ---- lookups in filtered order -------------------------------------------------------------------------

    def key_at(self, row: int) -> str:
        return self.index(row, 0).data(KeyRole)

    def row_for_key(self, key: str) -> int:
        """The filtered row of `key`, or -1 when unknown or filtered out."""
        if self._model is None:
            return -1
        src = self._model.row_for_key(key)
        if src < 0:
            return -1
        return self.mapFromSource(self._model.index(src)).row()

    def keys(self) -> list[str]:
        """Keys in filtered, sorted order."""
        if self._model is None:
            return []
        keys = self._model._keys
        return [keys[self.mapToSource(self.index(r, 0)).row()] for r in range(self.rowCount())]


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
