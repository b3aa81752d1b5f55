"""The review side panel: what the current image is, its score against the threshold, the verdict and notes."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.review.store import Decision
from app.review.threshold import ThresholdImpact

VERDICT_BUTTONS = (("ok", "OK  [O]", "#2e7d32"), ("ng", "NG  [N]", "#c62828"), ("unsure", "Unsure  [U]", "#ef8f00"))
SLIDER_STEPS = 1000
# Scores are normalised so 0 is a typical good part and 0.5 the model's own threshold; the range widens to the
# scores of the open dataset once it is scored.
DEFAULT_RANGE = (0.0, 2.0)


class ReviewPanel(QWidget):
    verdict_requested = Signal(object)  # "ok" | "ng" | "unsure" | None (clear)
    note_changed = Signal(str)
    threshold_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumWidth(260)
        layout = QVBoxLayout(self)

        info = QGroupBox("Image")
        form = QFormLayout(info)
        self.name_label = QLabel("-")
        self.name_label.setWordWrap(True)
        self.truth_label = QLabel("-")
        self.score_label = QLabel("-")
        form.addRow("File", self.name_label)
        form.addRow("Ground truth", self.truth_label)
        form.addRow("Score", self.score_label)
        layout.addWidget(info)

        thr = QGroupBox("Threshold")
        tl = QVBoxLayout(thr)
        row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(0, SLIDER_STEPS)
        self.threshold_spin = QDoubleSpinBox()
        self._lo, self._hi = DEFAULT_RANGE
        self.threshold_spin.setRange(self._lo, self._hi)
        self.threshold_spin.setDecimals(3)
        self.threshold_spin.setSingleStep(0.01)
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_spin)
        tl.addLayout(row)
        self.impact_label = QLabel("Score the dataset to see what the threshold does.")
        self.impact_label.setWordWrap(True)
        tl.addWidget(self.impact_label)
        layout.addWidget(thr)
        self.threshold_slider.valueChanged.connect(
            lambda v: self.threshold_spin.setValue(self._lo + v / SLIDER_STEPS * (self._hi - self._lo)))
        self.threshold_spin.valueChanged.connect(self._on_spin)

        verdict = QGroupBox("Verdict")
        vl = QVBoxLayout(verdict)
        buttons = QHBoxLayout()
        self.verdict_buttons: dict[str, QPushButton] = {}
        for value, text, colour in VERDICT_BUTTONS:
            b = QPushButton(text)
            b.setCheckable(True)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys keep driving the review, not the button
            b.setStyleSheet(f"QPushButton:checked {{ background: {colour}; color: white; font-weight: bold; }}")
            b.clicked.connect(lambda _c=False, v=value: self.verdict_requested.emit(v))
            buttons.addWidget(b)
            self.verdict_buttons[value] = b
        vl.addLayout(buttons)
        clear = QPushButton("Clear verdict  [Backspace]")
        clear.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        clear.clicked.connect(lambda: self.verdict_requested.emit(None))
        vl.addWidget(clear)
        self.advance_check = QCheckBox("Go to the next image after a verdict")
        self.advance_check.setChecked(True)
        vl.addWidget(self.advance_check)
        vl.addWidget(QLabel("Note"))
        self.note_edit = QPlainTextEdit()
        self.note_edit.setPlaceholderText("What you saw (saved as you type)")
        self.note_edit.setMaximumHeight(80)
        vl.addWidget(self.note_edit)
        layout.addWidget(verdict)
        # Notes are saved after a short pause in typing: every keystroke as a durable write would be wasteful,
        # and waiting for focus-out could lose a note on a crash.
        self._note_timer = QTimer(self, singleShot=True, interval=600)
        self._note_timer.timeout.connect(lambda: self.note_changed.emit(self.note_edit.toPlainText()))
        self.note_edit.textChanged.connect(self._note_timer.start)

        hist = QGroupBox("History")
        hl = QVBoxLayout(hist)
        self.history_list = QListWidget()
        hl.addWidget(self.history_list)
        layout.addWidget(hist, 1)

    def flush_note(self) -> None:
        """Save a pending note now (before moving to another image)."""
        if self._note_timer.isActive():
            self._note_timer.stop()
            self.note_changed.emit(self.note_edit.toPlainText())

    def _slider_position(self, value: float) -> int:
        return round((value - self._lo) / (self._hi - self._lo) * SLIDER_STEPS)

    def _on_spin(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(self._slider_position(value))
        self.threshold_slider.blockSignals(False)
        self.threshold_changed.emit(value)

    def set_range(self, lo: float, hi: float) -> None:
        """Cover the scores of the open dataset (and the default range around the model's threshold)."""
        self._lo, self._hi = min(lo, DEFAULT_RANGE[0]), max(hi, DEFAULT_RANGE[1])
        value = self.threshold()
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setRange(self._lo, self._hi)
        self.threshold_spin.blockSignals(False)
        self.set_threshold(value)

    def set_threshold(self, value: float) -> None:
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setValue(value)
        self.threshold_spin.blockSignals(False)
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(self._slider_position(value))
        self.threshold_slider.blockSignals(False)

    def threshold(self) -> float:
        return self.threshold_spin.value()

    def show_image(self, name: str, truth: str, score: float | None, threshold: float) -> None:
        self.name_label.setText(name)
        self.truth_label.setText(truth)
        self.show_score(score, threshold)

    def show_score(self, score: float | None, threshold: float) -> None:
        if score is None:
            self.score_label.setText("not scored")
            return
        ng = score >= threshold
        self.score_label.setText(f"<b>{score:.3f}</b> &nbsp; <span style='color:{'#c62828' if ng else '#2e7d32'}'>"
                                 f"{'NG' if ng else 'OK'}</span> at {threshold:.3f}")

    def show_decision(self, latest: Decision | None, history: list[Decision]) -> None:
        for value, button in self.verdict_buttons.items():
            button.setChecked(latest is not None and latest.verdict == value)
        self.note_edit.blockSignals(True)
        self.note_edit.setPlainText(latest.note or "" if latest else "")
        self.note_edit.blockSignals(False)
        self.show_history(history)

    def show_history(self, history: list[Decision]) -> None:
        self.history_list.clear()
        for d in reversed(history):
            text = f"{d.decided_at[:19].replace('T', ' ')}  {(d.verdict or 'cleared').upper()}  {d.reviewer}"
            if d.note:
                text += f"  \u2014 {d.note}"
            self.history_list.addItem(text)

    def show_impact(self, impact: ThresholdImpact | None) -> None:
        if impact is None:
            self.impact_label.setText("Score the dataset to see what the threshold does.")
            return
        self.impact_label.setText(
            f"{impact.predicted_ng} NG / {impact.predicted_ok} OK predicted; "
            f"<span style='color:#c62828'>{impact.false_positives} false alarms</span> on "
            f"{impact.n_good} good, <span style='color:#c62828'>{impact.misses} misses</span> on "
            f"{impact.n_defective} defective; {impact.flipped} verdicts flip vs the model's threshold")
