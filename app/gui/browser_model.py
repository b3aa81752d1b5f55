"""The browser's data side, no widgets: `BrowserModel` (one row per image, thumbnails asked for only when Qt
paints a row) and `BrowserFilter` (filter and sort). See app.gui.browser for the whole picture."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor, QPainter, QPixmap

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
