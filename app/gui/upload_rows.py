"""The Jobs panel's uploads: one row per folder on its way to a remote engine (what, files, bytes done / total, a
progress bar) with a Cancel that stops it; the job it was for is then not submitted. Rows come and go with
`EngineLink.uploads_changed`; the list is hidden while nothing is being sent."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.gui.engine_link import EngineLink
from app.gui.uploads import Upload

BAR_STEPS = 1000


class UploadRow(QWidget):
    def __init__(self, link: EngineLink, upload: Upload, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.upload_id = upload.id
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setRange(0, BAR_STEPS)
        self.bar.setFixedWidth(160)
        self.cancel_button = QPushButton("Cancel upload")
        self.cancel_button.setToolTip("Stop sending this folder; the job it is for is not submitted")
        self.cancel_button.clicked.connect(lambda: self._cancel(link))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.show_upload(upload)

    def show_upload(self, upload: Upload) -> None:
        cancelling = upload.cancel.is_set()
        self.label.setText(("Cancelling: " if cancelling else "Uploading ") + upload.describe())
        self.bar.setValue(round(upload.fraction * BAR_STEPS))
        self.bar.setFormat(f"{upload.fraction * 100:.0f}%")
        self.cancel_button.setEnabled(not cancelling)

    def _cancel(self, link: EngineLink) -> None:
        self.cancel_button.setEnabled(False)
        link.cancel_upload(self.upload_id)
        self.label.setText("Cancelling: " + self.label.text().removeprefix("Uploading "))


class UploadRows(QWidget):
    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._link = link
        self._rows: dict[str, UploadRow] = {}
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        link.uploads_changed.connect(self.set_uploads)
        self.set_uploads(link.uploads)

    def rows(self) -> list[UploadRow]:
        return list(self._rows.values())

    def set_uploads(self, uploads: list[Upload]) -> None:
        wanted = {u.id for u in uploads}
        for upload_id in [i for i in self._rows if i not in wanted]:
            row = self._rows.pop(upload_id)
            self._layout.removeWidget(row)
            row.deleteLater()
        for upload in uploads:
            row = self._rows.get(upload.id)
            if row is None:
                row = self._rows[upload.id] = UploadRow(self._link, upload, self)
                self._layout.addWidget(row)
            else:
                row.show_upload(upload)
        self.setVisible(bool(self._rows))
