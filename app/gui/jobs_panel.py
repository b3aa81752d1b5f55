"""The jobs panel: every engine job with a live progress bar, its log, and Cancel.

The table is a model updated in place from `EngineLink.jobs_changed`: rows are inserted, removed and changed
individually (never a reset each second), so the selection, the scroll position and the current row survive
the once-a-second polling. The progress column is painted by a delegate (QStyleOptionProgressBar), which costs
nothing per row, unlike one QProgressBar widget per cell.

The log pane follows the selected job: its worker's output (GET /jobs/{id}/logs, polled every second while
the job is queued or running, only the new tail appended) interleaved with a line per change of its state or
progress message, marked "▸". Training prints little itself; those lines are what shows it is moving. The pane
sticks to the end unless the user scrolled up to read.

Above the table, the folders on their way to a remote engine (app/gui/upload_rows.py): a job is listed once its
data has arrived and it was submitted.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    QTimer,
)
from PySide6.QtGui import QColor, QPainter, QPalette, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.gui.engine_link import ACTIVE_STATES, EngineLink
from app.gui.upload_rows import UploadRows
from engine.client import JobView

COLUMNS = ("ID", "Kind", "State", "Progress", "Message", "Placement", "Created")
COL_ID, COL_KIND, COL_STATE, COL_PROGRESS, COL_MESSAGE, COL_PLACEMENT, COL_CREATED = range(len(COLUMNS))
JobRole = int(Qt.ItemDataRole.UserRole) + 1  # the JobView of the row
ProgressRole = int(Qt.ItemDataRole.UserRole) + 2  # progress 0..1 as a float

LOG_POLL_MS = 1000
TRAIL_MARK = "▸"  # lines the panel writes (state changes), told apart from the job's own output
ERROR_COLOR = QColor(200, 30, 30)
STATE_COLORS = {
    "queued": QColor(130, 130, 130),
    "running": QColor(40, 110, 200),
    "succeeded": QColor(40, 150, 70),
    "failed": ERROR_COLOR,
    "cancelled": QColor(150, 120, 40),
}


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


class JobsModel(QAbstractTableModel):
    """Jobs newest first; `set_jobs` applies a new list as row inserts / removes / changes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs: list[JobView] = []

    # -- Qt model API
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._jobs):
            return None
        job = self._jobs[index.row()]
        col = index.column()
        if role == JobRole:
            return job
        if role == ProgressRole:
            return float(job.progress or 0.0)
        failed = job.state == "failed"
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_ID:
                return job.id
            if col == COL_KIND:
                return job.kind
            if col == COL_STATE:
                return job.state
            if col == COL_PROGRESS:
                return f"{float(job.progress or 0.0) * 100:.0f}%"
            if col == COL_MESSAGE:
                return _first_line(job.error or "") if failed else (job.message or "")
            if col == COL_PLACEMENT:
                return job.placement or ""
            if col == COL_CREATED:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created or 0))
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == COL_STATE:
                return STATE_COLORS.get(job.state)
            if col == COL_MESSAGE and failed:
                return ERROR_COLOR
        if role == Qt.ItemDataRole.ToolTipRole:
            if failed and col in (COL_MESSAGE, COL_STATE, COL_PROGRESS):
                return job.error or "failed"
            if col == COL_MESSAGE:
                return job.message or None
            if col in (COL_ID, COL_KIND):
                params = "\n".join(f"{k} = {v}" for k, v in sorted((job.params or {}).items()))
                return f"{job.kind} {job.id}\n{params}"
            if col == COL_PLACEMENT:
                return job.placement or None
        return None

    # -- updates
    def job_at(self, row: int) -> JobView | None:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def row_of(self, job_id: str) -> int:
        return next((i for i, j in enumerate(self._jobs) if j.id == job_id), -1)

    def set_jobs(self, jobs: list[JobView]) -> None:
        new = sorted(jobs, key=lambda j: j.created or 0.0, reverse=True)
        new_ids = [j.id for j in new]
        wanted = set(new_ids)
        # 1. rows that went away, bottom up so the row numbers above stay right
        for row in range(len(self._jobs) - 1, -1, -1):
            if self._jobs[row].id not in wanted:
                self.beginRemoveRows(QModelIndex(), row, row)
                del self._jobs[row]
                self.endRemoveRows()
        old_ids = [j.id for j in self._jobs]
        kept = [i for i in new_ids if i in set(old_ids)]
        if kept != old_ids:
            # Survivors changed order (not seen in practice: `created` never changes). A layout change keeps
            # persistent indexes, hence the selection, pointing at the same jobs.
            self.layoutAboutToBeChanged.emit()
            by_id = {j.id: j for j in self._jobs}
            before = self.persistentIndexList()
            self._jobs = [by_id[i] for i in kept]
            pos = {i: r for r, i in enumerate(kept)}
            self.changePersistentIndexList(
                before, [self.index(pos[old_ids[ix.row()]], ix.column()) for ix in before])
            self.layoutChanged.emit()
        # 2. new rows where they belong (new jobs come at the top: newest first)
        for row, job in enumerate(new):
            if row >= len(self._jobs) or self._jobs[row].id != job.id:
                self.beginInsertRows(QModelIndex(), row, row)
                self._jobs.insert(row, job)
                self.endInsertRows()
        # 3. changed rows: one dataChanged per row that differs
        for row, job in enumerate(new):
            if self._jobs[row] != job:
                self._jobs[row] = job
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))


class ProgressDelegate(QStyledItemDelegate):
    """Paints the row's progress as a native progress bar, coloured by state."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex,
              ) -> None:
        job = index.data(JobRole)
        if job is None:
            super().paint(painter, option, index)
            return
        widget = option.widget  # type: ignore[attr-defined]
        style = widget.style() if widget is not None else QApplication.style()
        # The selection highlight first, so a selected row looks selected across its whole width.
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, option, painter, widget)
        bar = QStyleOptionProgressBar()
        bar.rect = option.rect.adjusted(3, 3, -3, -3)  # type: ignore[attr-defined]
        bar.minimum, bar.maximum = 0, 100
        state = job.state
        fraction = float(job.progress or 0.0)
        bar.progress = 100 if state == "succeeded" else round(fraction * 100)
        bar.text = f"{bar.progress}%" if state in ("running", "succeeded") else state
        bar.textVisible = True
        bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
        bar.palette = QPalette(option.palette)  # type: ignore[attr-defined]
        bar.palette.setColor(QPalette.ColorRole.Highlight, STATE_COLORS.get(state, STATE_COLORS["running"]))
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, widget)


class JobsPanel(QWidget):
    """Jobs table (newest first), the selected job's live log, and Cancel for queued / running jobs."""

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._link = link
        self._log_job: str | None = None
        self._log_in_flight = False
        self._log_final_fetched = False
        self._log_shown = 0  # characters of the job's log already in the pane
        self._log_title = "Log"
        self._trail_key: tuple[str, str, str] | None = None
        self._cancelling: str | None = None

        self.status_label = QLabel()
        self.uploads = UploadRows(link)
        self.model = JobsModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        # Errors often start with a long path and end with the reason: keep both ends visible.
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setItemDelegateForColumn(COL_PROGRESS, ProgressDelegate(self.table))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        header.setSectionResizeMode(COL_MESSAGE, QHeaderView.ResizeMode.Stretch)
        for col, width in ((COL_ID, 110), (COL_KIND, 110), (COL_STATE, 80), (COL_PROGRESS, 120),
                           (COL_PLACEMENT, 160), (COL_CREATED, 140)):
            self.table.setColumnWidth(col, width)

        self.cancel_button = QPushButton("Cancel job")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Cancel the selected queued or running job")
        self.cancel_button.clicked.connect(self._cancel_selected)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)

        self.log_title = QLabel("Log")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.log_view.setPlaceholderText("Select a job to see its log")
        font = self.log_view.font()
        font.setFamily("monospace")
        font.setStyleHint(font.StyleHint.Monospace)
        self.log_view.setFont(font)

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.status_label)
        top_layout.addWidget(self.uploads)
        top_layout.addWidget(self.table)
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.message_label, 1)
        top_layout.addLayout(buttons)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(self.log_title)
        bottom_layout.addWidget(self.log_view)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

        self._log_timer = QTimer(self)
        self._log_timer.setInterval(LOG_POLL_MS)
        self._log_timer.timeout.connect(self._poll_log)

        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        link.jobs_changed.connect(self._on_jobs)
        link.status_changed.connect(self._on_status)
        self._on_status(link.state, link.detail)
        self.model.set_jobs(link.jobs)

    # ----------------------------------------------------------------------------------------- public

    def jobs(self) -> list[JobView]:
        """The jobs as the table shows them, newest first."""
        return [job for row in range(self.model.rowCount()) if (job := self.model.job_at(row)) is not None]

    def selected_job(self) -> JobView | None:
        rows = self.table.selectionModel().selectedRows()
        return self.model.job_at(rows[0].row()) if rows else None

    def select_job(self, job_id: str) -> bool:
        row = self.model.row_of(job_id)
        if row < 0:
            return False
        self.table.selectionModel().select(
            self.model.index(row, 0),
            QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(self.model.index(row, 0))
        return True

    # ----------------------------------------------------------------------------------------- updates

    def _on_status(self, state: str, detail: str) -> None:
        where = self._link.url or ("local engine" if self._link.is_local else "remote engine")
        text = f"Engine: {state}" + (f" — {detail}" if detail and detail != self._link.url else f" ({where})")
        self.status_label.setText(text)
        bad = state in ("unreachable", "unauthorized") or (state == "stopped" and bool(detail))
        self.status_label.setStyleSheet(f"color: {ERROR_COLOR.name()};" if bad else "")
        self._update_buttons()

    def _on_jobs(self, jobs: list[JobView]) -> None:
        self.model.set_jobs(jobs)
        self._update_buttons()
        if self._cancelling is not None:
            row = self.model.row_of(self._cancelling)
            cancelled = self.model.job_at(row)
            if cancelled is None or cancelled.state not in ACTIVE_STATES:
                self._cancelling = None
                self.message_label.clear()
        job = self.selected_job()
        if job is not None and job.id == self._log_job:
            self._trail(job)
            self._follow_log(job)

    def _selection_changed(self, *_: object) -> None:
        job = self.selected_job()
        self._update_buttons()
        new_id = job.id if job is not None else None
        if new_id == self._log_job:
            return
        if self._cancelling is None:
            self.message_label.clear()
        self._log_job = new_id
        self._log_in_flight = False
        self._log_final_fetched = False
        self._log_shown = 0
        self._trail_key = None
        self.log_view.clear()
        self._log_title = f"Log of {job.kind} {job.id}" if job else "Log"
        self.log_title.setText(self._log_title)
        if job is None:
            self._log_timer.stop()
            return
        created = time.strftime("%H:%M:%S", time.localtime(job.created or 0))
        self._append_line(f"{TRAIL_MARK} {job.kind} {job.id}, submitted {created}")
        self._trail(job)
        self._fetch_log()
        self._follow_log(job)

    def _trail(self, job: JobView) -> None:
        """One line per change of state or message, so a job that prints nothing still shows what it does."""
        key = (job.state, job.message or "", job.error or "")
        if key == self._trail_key:
            return
        self._trail_key = key
        now = time.strftime("%H:%M:%S")
        pct = f"{float(job.progress or 0.0) * 100:3.0f}%"
        if job.state == "failed":
            text = f"failed: {job.error or job.message or ''}"
        elif job.state in ("succeeded", "cancelled"):
            text = job.state
        else:
            text = f"{job.state:8s} {pct}  {job.message or ''}"
        self._append_line(f"{TRAIL_MARK} {now}  {text}".rstrip())

    def _follow_log(self, job: JobView) -> None:
        # Poll while the job can still write; one last fetch once it is over, then stop.
        if job.state in ACTIVE_STATES:
            if not self._log_timer.isActive():
                self._log_timer.start()
        else:
            self._log_timer.stop()
            if not self._log_final_fetched:
                self._log_final_fetched = True
                self._fetch_log(force=True)

    def _poll_log(self) -> None:
        self._fetch_log()

    def _fetch_log(self, force: bool = False) -> None:
        job_id = self._log_job
        if job_id is None or (self._log_in_flight and not force):
            return
        self._log_in_flight = True
        self._link.fetch_logs(job_id, lambda text: self._show_log(job_id, text),
                              lambda message: self._log_failed(job_id, message))

    def _log_failed(self, job_id: str, message: str) -> None:
        if job_id == self._log_job:
            self._log_in_flight = False
            self.log_title.setText(f"Log of {job_id} (not available: {message})")

    def _show_log(self, job_id: str, text: str) -> None:
        if job_id != self._log_job:  # the user selected another job meanwhile
            return
        self._log_in_flight = False
        self.log_title.setText(self._log_title)
        if len(text) < self._log_shown:  # not the log we were following (replaced): show it from its start
            self._log_shown = 0
        # The engine returns the whole log each time; logs only grow, so only the new tail is appended.
        new, self._log_shown = text[self._log_shown:], len(text)
        if new:
            self._append(new)

    def _append_line(self, line: str) -> None:
        self._append(("" if self._ends_with_newline() else "\n") + line + "\n")

    def _ends_with_newline(self) -> bool:
        doc = self.log_view.document()
        return doc.isEmpty() or doc.characterAt(doc.characterCount() - 2) in ("\n", "\u2029")

    def _append(self, text: str) -> None:
        bar = self.log_view.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 2
        keep = bar.value()
        cursor = QTextCursor(self.log_view.document())  # not the view's cursor: keep the user's selection
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        # Follow the end unless the user scrolled up to read something.
        bar.setValue(bar.maximum() if at_bottom else keep)

    def _update_buttons(self) -> None:
        job = self.selected_job()
        self.cancel_button.setEnabled(
            job is not None and job.state in ACTIVE_STATES and self._link.state == "connected")

    def _cancel_selected(self) -> None:
        job = self.selected_job()
        if job is None or job.state not in ACTIVE_STATES:
            return
        job_id = job.id
        self.cancel_button.setEnabled(False)  # until the next job list says what happened
        self._cancelling = job_id
        self.message_label.setStyleSheet("")
        self.message_label.setText(f"cancelling {job_id}…")
        self._link.cancel(job_id, on_error=self._cancel_failed)

    def _cancel_failed(self, message: str) -> None:
        self._cancelling = None
        self.message_label.setStyleSheet(f"color: {ERROR_COLOR.name()};")
        self.message_label.setText(message)
        self._update_buttons()
