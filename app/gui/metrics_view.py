"""Evaluation panel: ROC and PRO curves, score histogram with a draggable threshold, per-defect recall, summary.

The threshold arithmetic lives in app.review.threshold (no Qt); this widget only draws it. The PRO curve needs a
pass over every pixel of every anomaly map (engine.metrics.pixel: ~2 s for 40 maps of 1024 x 1024), so it is
computed on a worker thread and drawn when ready; everything else is instant and done on the GUI thread.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHeaderView,
    QLabel,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.gui.tasks import run_in_background
from app.review.threshold import ScoreSet, ThresholdImpact
from engine.metrics import f1_max, image_auroc, roc_curve_points
from engine.metrics.pixel import pixel_histogram

# AU-PRO is conventionally integrated up to 30 % FPR (MVTec AD); beyond it the curve says little.
PRO_FPR_LIMIT = 0.3

# Colours readable on pyqtgraph's dark default background and on a light one.
GOOD_COLOR = (46, 170, 80)
DEFECT_COLOR = (220, 50, 47)
UNKNOWN_COLOR = (150, 150, 150)
THRESHOLD_COLOR = (255, 170, 0)
CURVE_COLOR = (60, 140, 230)


class _Panel(QStackedWidget):
    """A plot, or in its place a message saying why there is nothing to plot."""

    def __init__(self, title: str, x_label: str, y_label: str) -> None:
        super().__init__()
        self.plot = pg.PlotWidget(title=title)
        self.plot.setLabel("bottom", x_label)
        self.plot.setLabel("left", y_label)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        for side in ("bottom", "left"):
            # Rates and scores are read as plain numbers; "(x0.001)" axis prefixes only confuse.
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.message = QLabel(alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.message.setStyleSheet("color: gray; padding: 12px;")
        self.addWidget(self.plot)
        self.addWidget(self.message)

    def show_plot(self) -> None:
        self.setCurrentWidget(self.plot)

    def show_message(self, text: str) -> None:
        self.plot.clear()
        self.message.setText(text)
        self.setCurrentWidget(self.message)

    @property
    def showing_message(self) -> bool:
        return self.currentWidget() is self.message

    def title(self) -> str:
        return self.plot.getPlotItem().titleLabel.text


class MetricsView(QWidget):
    """Image ROC, pixel PRO, score histogram with threshold line, per-defect recall table and a summary line.

    Signals:
        threshold_changed(float): the user moved the threshold line (emitted continuously while dragging).
        threshold_committed(float): the user released the line; react here to anything expensive.
        pro_ready(): the PRO panel shows its final state (curve or message) for the current results; emitted
            within set_results when there is nothing to compute, later (from the worker) otherwise.
    set_threshold never emits, so a caller may echo threshold_changed back into it without a feedback loop.
    """

    threshold_changed = Signal(float)
    threshold_committed = Signal(float)
    pro_ready = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._set: ScoreSet | None = None
        self._threshold: float | None = None
        self._reference: float | None = None
        self._syncing = False
        self._x_range = (0.0, 1.0)  # score range of the histogram
        self._pro_generation = 0
        self.impact: ThresholdImpact | None = None  # at the current threshold, None before results

        self.roc = _Panel("ROC", "false positive rate", "true positive rate")
        self.pro = _Panel("PRO", "false positive rate (pixels)", "per-region overlap")
        self.histogram = _Panel("Score histogram", "anomaly score", "images")
        self.histogram.plot.setMouseEnabled(x=True, y=False)

        self.threshold_line = pg.InfiniteLine(
            angle=90,
            movable=True,
            pen=pg.mkPen(THRESHOLD_COLOR, width=2),
            hoverPen=pg.mkPen(THRESHOLD_COLOR, width=4),
            label="threshold {value:.3f}",
            labelOpts={"position": 0.92, "color": THRESHOLD_COLOR, "fill": (0, 0, 0, 140)},
        )
        self.threshold_line.setZValue(10)
        self.threshold_line.sigPositionChanged.connect(self._on_line_moved)
        self.threshold_line.sigPositionChangeFinished.connect(self._on_line_released)
        self.reference_line = pg.InfiniteLine(
            angle=90, movable=False, pen=pg.mkPen(UNKNOWN_COLOR, width=1, style=Qt.PenStyle.DashLine)
        )
        self.operating_point = pg.ScatterPlotItem(
            size=11, brush=pg.mkBrush(THRESHOLD_COLOR), pen=pg.mkPen("k")
        )

        self.recall_table = QTableWidget(0, 3)
        self.recall_table.setHorizontalHeaderLabels(["Defect type", "Detected", "Recall"])
        self.recall_table.verticalHeader().setVisible(False)
        self.recall_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.recall_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

        self.summary = QLabel(wordWrap=True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QGridLayout(self)
        layout.addWidget(self.roc, 0, 0)
        layout.addWidget(self.pro, 0, 1)
        layout.addWidget(self.histogram, 1, 0)
        layout.addWidget(self.recall_table, 1, 1)
        layout.addWidget(self.summary, 2, 0, 1, 2)
        # Which images the figures count (e.g. the test split only, as `defectscope eval`): set by the caller.
        self.scope_label = QLabel(wordWrap=True)
        self.scope_label.setStyleSheet("color: #555;")
        layout.addWidget(self.scope_label, 3, 0, 1, 2)
        layout.setRowStretch(0, 1)
        layout.setRowStretch(1, 1)
        self._clear("No results yet.")

    # ------------------------------------------------------------------------------------------------ API

    def set_results(
        self,
        scores: Mapping[str, float],
        labels: Mapping[str, str],
        defect_types: Mapping[str, str | None],
        maps: Mapping[str, np.ndarray] | None = None,
        masks: Mapping[str, np.ndarray | None] | None = None,
    ) -> None:
        """Show a new set of results (keys: app.keys.sample_key; labels: engine.datasets.types GOOD/...).

        maps / masks (optional) feed the PRO curve, computed on a worker thread: pass them at the resolution
        the model produced (not upsampled to the image), and do not modify the arrays in place afterwards.
        masks may hold None for good images (all pixels normal). Bad inputs show a message, never raise.
        """
        self._pro_generation += 1  # any PRO still running belongs to the previous results
        try:
            score_set = ScoreSet(scores, labels, defect_types)
        except ValueError as exc:
            self._clear(f"Cannot show these results: {exc}")
            return
        if len(score_set) == 0:
            self._clear("No scored images.")
            return
        self._set = score_set
        if self._threshold is None:
            self._threshold = self._default_threshold(score_set)
        self._draw_roc(score_set)
        self._draw_histogram(score_set)
        self._start_pro(score_set, maps, masks)
        self._update_threshold_views()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold line (no signal). The first threshold ever set is also the reference for flips."""
        self._threshold = float(threshold)
        if self._reference is None:
            self.set_reference_threshold(threshold)
        self._update_threshold_views()

    def set_reference_threshold(self, threshold: float | None) -> None:
        """The threshold in use (e.g. the model's): drawn dashed; the summary counts verdict flips against it."""
        self._reference = None if threshold is None else float(threshold)
        self._update_threshold_views()

    def threshold(self) -> float | None:
        return self._threshold

    def set_scope(self, text: str) -> None:
        """One line saying which images the figures include."""
        self.scope_label.setText(text)
        self.scope_label.setVisible(bool(text))

    # ------------------------------------------------------------------------------------------------ drawing

    def _clear(self, message: str) -> None:
        self._set = None
        self.impact = None
        for panel in (self.roc, self.pro, self.histogram):
            panel.show_message(message)
        self.recall_table.setRowCount(0)
        self.summary.setText(message)

    @staticmethod
    def _default_threshold(s: ScoreSet) -> float:
        # Best-F1 threshold when both classes are labelled; otherwise just above the highest good score (no false
        # positive), or the middle of the scores when nothing is labelled good.
        labelled = s.good | s.defective
        if s.good.any() and s.defective.any():
            return f1_max(s.scores[labelled], s.defective[labelled])[1]
        if s.good.any():
            return float(np.nextafter(s.scores[s.good].max(), np.inf))
        return float(np.median(s.scores))

    def _draw_roc(self, s: ScoreSet) -> None:
        labelled = s.good | s.defective
        y = s.defective[labelled]
        if not (s.good.any() and s.defective.any()):
            n = int(labelled.sum())
            only = "good" if s.good.any() else "defective"
            self.roc.show_message(
                "ROC needs both good and defective images; "
                + (f"all {n} labelled images are {only}." if n else "no image is labelled.")
            )
            return
        fpr, tpr = roc_curve_points(s.scores[labelled], y)
        auroc = image_auroc(s.scores[labelled], y)
        plot = self.roc.plot
        plot.clear()
        plot.plot([0, 1], [0, 1], pen=pg.mkPen(UNKNOWN_COLOR, style=Qt.PenStyle.DashLine))
        plot.plot(fpr, tpr, pen=pg.mkPen(CURVE_COLOR, width=2))
        plot.addItem(self.operating_point)
        plot.setTitle(f"ROC (image AUROC {auroc:.3f})")
        plot.setRange(xRange=(0, 1), yRange=(0, 1), padding=0.02)
        self.roc.show_plot()

    def _draw_histogram(self, s: ScoreSet) -> None:
        bins = int(np.clip(np.sqrt(len(s)) * 2, 10, 60))
        edges = np.histogram_bin_edges(s.scores, bins=bins)
        plot = self.histogram.plot
        plot.clear()
        if plot.getPlotItem().legend is None:
            plot.addLegend(offset=(-10, 10))
        plot.getPlotItem().legend.clear()
        unknown = ~(s.good | s.defective)
        for name, mask, color in (
            ("good", s.good, GOOD_COLOR),
            ("defective", s.defective, DEFECT_COLOR),
            ("unlabelled", unknown, UNKNOWN_COLOR),
        ):
            if not mask.any():
                continue
            counts, _ = np.histogram(s.scores[mask], bins=edges)
            plot.addItem(
                pg.PlotDataItem(
                    edges,
                    counts,
                    stepMode="center",
                    fillLevel=0,
                    name=name,
                    pen=pg.mkPen(color, width=1.5),
                    fillBrush=pg.mkBrush(*color, 90),
                )
            )
        plot.addItem(self.reference_line)
        plot.addItem(self.threshold_line)
        self._x_range = (float(edges[0]), float(edges[-1]))
        plot.setXRange(*self._x_range, padding=0.03)
        plot.enableAutoRange(axis="y")
        self.histogram.show_plot()

    def _update_threshold_views(self) -> None:
        if self._set is None or self._threshold is None:
            return
        t = self._threshold
        self._syncing = True  # setValue emits sigPositionChanged; that is not the user moving the line
        try:
            self.threshold_line.setValue(t)
        finally:
            self._syncing = False
        self.reference_line.setVisible(self._reference is not None)
        if self._reference is not None:
            self.reference_line.setValue(self._reference)
        lo, hi = self._x_range
        if not lo <= t <= hi:  # keep a threshold set from outside visible
            self.histogram.plot.setXRange(min(lo, t), max(hi, t), padding=0.03)
        self._refresh(t)

    def _refresh(self, t: float) -> None:
        s = self._set
        if s is None:
            return
        impact = s.impact(t, self._reference)
        self.impact = impact
        self.summary.setText(_summary_text(impact))
        if impact.n_good and impact.n_defective:
            self.operating_point.setData(
                [impact.false_positives / impact.n_good], [impact.detected / impact.n_defective]
            )
        self._fill_recall_table(s.per_defect_recall(t))

    def _fill_recall_table(self, recall: dict[str, tuple[int, int]]) -> None:
        rows = list(recall.items())
        if len(rows) > 1:
            rows.append(
                ("All defects", (sum(d for d, _ in recall.values()), sum(n for _, n in recall.values())))
            )
        table = self.recall_table
        table.setRowCount(len(rows))
        for r, (name, (detected, total)) in enumerate(rows):
            cells = (name, f"{detected} / {total}", f"{100.0 * detected / total:.1f} %" if total else "–")
            for c, text in enumerate(cells):
                item = table.item(r, c)
                if item is None:
                    item = QTableWidgetItem()
                    if c:
                        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    table.setItem(r, c, item)
                item.setText(text)

    def _on_line_moved(self) -> None:
        if self._syncing:
            return
        self._threshold = float(self.threshold_line.value())
        self._refresh(self._threshold)
        self.threshold_changed.emit(self._threshold)

    def _on_line_released(self) -> None:
        if not self._syncing:
            self.threshold_committed.emit(float(self.threshold_line.value()))

    # ------------------------------------------------------------------------------------------------ PRO

    def _start_pro(
        self,
        s: ScoreSet,
        maps: Mapping[str, np.ndarray] | None,
        masks: Mapping[str, np.ndarray | None] | None,
    ) -> None:
        if not maps or not masks or all(m is None for m in masks.values()):
            self.pro.show_message("No pixel masks: the PRO curve needs ground-truth defect masks.")
            self.pro_ready.emit()
            return
        # An image without a mask counts as all-normal only when it is labelled good; a defective image without
        # a mask would count its defect pixels as false positives, so it is left out.
        good = {k for k, is_good in zip(s.keys, s.good, strict=True) if is_good}
        keys = [k for k in maps if masks.get(k) is not None or k in good]
        pairs = ([maps[k] for k in keys], [masks.get(k) for k in keys])
        generation = self._pro_generation
        self.pro.show_message("Computing the PRO curve…")
        # The GUI's one background mechanism; a view deleted meanwhile gets nothing (a bound method's owner).
        run_in_background(lambda: _compute_pro(*pairs), lambda result: self._on_pro_done(generation, result),
                          lambda message: self._on_pro_done(generation, f"Cannot compute the PRO curve: {message}"),
                          guard=lambda: shiboken6.isValid(self), lane="compute")

    def _on_pro_done(self, generation: int, result: object) -> None:
        if generation != self._pro_generation:
            return  # results were replaced while this was computing
        if isinstance(result, str):
            self.pro.show_message(result)
        else:
            fpr, pro, au = result  # type: ignore[misc]
            plot = self.pro.plot
            plot.clear()
            plot.plot(fpr, pro, pen=pg.mkPen(CURVE_COLOR, width=2))
            plot.setTitle(f"PRO (AU-PRO@{PRO_FPR_LIMIT:g} {au:.3f})")
            plot.setRange(xRange=(0, PRO_FPR_LIMIT), yRange=(0, 1), padding=0.02)
            self.pro.show_plot()
        self.pro_ready.emit()


def _compute_pro(maps: list, masks: list) -> object:
    """Pool thread: one histogram pass serves both the curve and its area; a message str when there is none."""
    if not maps:
        return "Cannot compute the PRO curve: no anomaly map has a mask (or is of a good image)"
    hist = pixel_histogram(maps, masks)
    if hist is None:
        return "No defect pixels in the masks: the PRO curve needs at least one defect region."
    fpr, pro = hist.pro_curve(PRO_FPR_LIMIT)
    return fpr, pro, hist.aupro(PRO_FPR_LIMIT)


def _summary_text(i: ThresholdImpact) -> str:
    parts = [f"Threshold {i.threshold:.3f}: {i.predicted_ng} NG, {i.predicted_ok} OK"]
    if i.n_good:
        parts.append(f"{i.false_positives} false positives (of {i.n_good} good)")
    if i.n_defective:
        parts.append(f"{i.misses} misses (of {i.n_defective} defective)")
    if i.n_unknown:
        parts.append(f"{i.n_unknown} unlabelled")
    if i.previous is not None:
        parts.append(f"{i.flipped} verdicts change vs {i.previous:.3f}")
    return " · ".join(parts)
