"""The detection metrics view: AP@0.5 per class, mAP@0.5 and mAP@[.5:.95], precision-recall curves, and the
class confusion matrix at the current score threshold.

The figures come from the engine's owners (engine.metrics.detection for AP and the curves, pycocotools underneath;
engine.metrics.detection_match for the confusion matrix), over the images `defectscope eval` counts: the
test-split items that have ground truth. `detection_figures` and `confusion_at` hold no Qt and run off the GUI
thread; the widget only shows their results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.detections import Detections
from engine.metrics.detection import detection_metrics
from engine.metrics.detection_match import BACKGROUND, confusion_matrix

METRICS_SPLIT = "test"  # as `defectscope eval` (engine.detection_eval)
_CURVE_COLORS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                 (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128))


@dataclass(frozen=True)
class DetectionFigures:
    keys: list[str]  # the images counted
    classes: list[str]  # the detector's classes, then any labelled class it does not know
    metrics: dict  # engine.metrics.detection.detection_metrics(curves=True)


def metric_keys(dets: Detections) -> list[str]:
    """The items the metrics count: test split with ground truth (an image labelled clean has empty truth)."""
    return [k for k, it in dets.items.items() if it.split == METRICS_SPLIT and it.truth is not None]


def figure_classes(dets: Detections, keys: list[str]) -> list[str]:
    # A labelled class the model does not know still counts: its AP is 0, its boxes are misses.
    extra = sorted({c for k in keys for c in dets.items[k].truth.classes} - set(dets.classes))  # type: ignore[union-attr]
    return [*dets.classes, *extra]


def detection_figures(dets: Detections) -> DetectionFigures:
    """AP per class, the two mAPs and the PR curves of these detections (threshold-free)."""
    keys = metric_keys(dets)
    classes = figure_classes(dets, keys)
    index = {c: i for i, c in enumerate(classes)}
    gt, pred = [], []
    for k in keys:
        it = dets.items[k]
        truth = it.truth
        assert truth is not None  # metric_keys keeps only items with truth
        gt.append((truth.boxes, np.asarray([index[c] for c in truth.classes], np.int64)))
        known = [i for i, c in enumerate(it.classes) if c in index]
        pred.append((it.boxes[known], it.scores[known], np.asarray([index[it.classes[i]] for i in known], np.int64)))
    return DetectionFigures(keys, classes, detection_metrics(gt, pred, classes, curves=True))


def confusion_at(dets: Detections, keys: list[str], classes: list[str], threshold: float) -> np.ndarray:
    """[K + 1, K + 1] counts at `threshold`: rows labelled, columns detected, the last of each BACKGROUND."""
    images = []
    for k in keys:
        it = dets.items[k]
        assert it.truth is not None
        images.append((it.truth.boxes, it.truth.classes, it.boxes, it.scores, it.classes))
    return confusion_matrix(images, classes, threshold)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


class DetectionMetricsView(QWidget):
    """AP table and summary | PR curves | confusion matrix."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.scope_label = QLabel("Run Model ▸ Detect defects to see detection metrics.")
        self.scope_label.setWordWrap(True)
        self.summary_label = QLabel("")
        self.ap_table = QTableWidget(0, 2)
        self.ap_table.setHorizontalHeaderLabels(["class", "AP@0.5"])
        self.ap_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.ap_table.verticalHeader().hide()
        self.pr_plot = pg.PlotWidget(background="w")
        self.pr_plot.setLabel("bottom", "recall")
        self.pr_plot.setLabel("left", "precision")
        self.pr_plot.setXRange(0, 1)
        self.pr_plot.setYRange(0, 1.02)
        self.pr_plot.addLegend(offset=(-10, 10))
        self.pr_plot.setMinimumWidth(220)
        self.confusion_label = QLabel("Confusion matrix (rows labelled, columns detected)")
        self.confusion_table = QTableWidget(0, 0)
        self._curves: dict[str, tuple[list[float], list[float]]] = {}

        left = QVBoxLayout()
        left.addWidget(self.summary_label)
        left.addWidget(self.ap_table, 1)
        right = QVBoxLayout()
        right.addWidget(self.confusion_label)
        right.addWidget(self.confusion_table, 1)
        row = QHBoxLayout()
        row.addLayout(left, 1)
        row.addWidget(self.pr_plot, 2)
        row.addLayout(right, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.scope_label)
        layout.addLayout(row, 1)

    def clear(self) -> None:
        self.set_scope("Run Model ▸ Detect defects to see detection metrics.")
        self.summary_label.setText("")
        self.ap_table.setRowCount(0)
        self.pr_plot.clear()
        self._curves = {}
        self.confusion_table.setRowCount(0)
        self.confusion_table.setColumnCount(0)

    def set_scope(self, text: str) -> None:
        self.scope_label.setText(text)

    def set_metrics(self, metrics: dict) -> None:
        """A detection_metrics(curves=True) result."""
        self.summary_label.setText(f"mAP@0.5 {_fmt(metrics.get('map50'))}    "
                                   f"mAP@[.5:.95] {_fmt(metrics.get('map50_95'))}")
        per_class = metrics.get("ap50_per_class", {})
        self.ap_table.setRowCount(len(per_class))
        for row, (name, ap) in enumerate(per_class.items()):
            self.ap_table.setItem(row, 0, QTableWidgetItem(name))
            self.ap_table.setItem(row, 1, QTableWidgetItem(_fmt(ap)))
        self.pr_plot.clear()
        self._curves = {}
        for i, (name, curve) in enumerate(metrics.get("pr50_per_class", {}).items()):
            recall, precision = list(curve["recall"]), list(curve["precision"])
            self._curves[name] = (recall, precision)
            self.pr_plot.plot(recall, precision, pen=pg.mkPen(_CURVE_COLORS[i % len(_CURVE_COLORS)], width=2),
                              name=name)

    def set_confusion(self, classes: list[str], matrix: np.ndarray, threshold: float) -> None:
        names = [*classes, BACKGROUND]
        self.confusion_label.setText(f"Confusion matrix at score ≥ {threshold:.2f} (rows labelled, columns "
                                     "detected; background: a box on no defect / a defect no box found)")
        self.confusion_table.setRowCount(len(names))
        self.confusion_table.setColumnCount(len(names))
        self.confusion_table.setHorizontalHeaderLabels(names)
        self.confusion_table.setVerticalHeaderLabels(names)
        for r in range(len(names)):
            for c in range(len(names)):
                self.confusion_table.setItem(r, c, QTableWidgetItem(str(int(matrix[r, c]))))

    # ---- what the view shows, for tests and scripts
    def ap_rows(self) -> dict[str, str]:
        return {self.ap_table.item(r, 0).text(): self.ap_table.item(r, 1).text()
                for r in range(self.ap_table.rowCount())}

    def curves(self) -> dict[str, tuple[list[float], list[float]]]:
        return dict(self._curves)

    def confusion(self) -> np.ndarray:
        n = self.confusion_table.rowCount()
        return np.array([[int(self.confusion_table.item(r, c).text()) for c in range(n)] for r in range(n)],
                        np.int64).reshape(n, n)
