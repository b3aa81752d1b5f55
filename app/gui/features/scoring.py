"""Predictions and scoring: Model ▸ Score dataset, the predictions of the active model on the open dataset,
heatmaps on the image, the score in the review panel, the threshold, and the Metrics dock.

The metrics use the rule `defectscope eval` uses: only images whose resolved split is "test" (the split the
predictions recorded, else engine.datasets.splits.resolve_splits on the open dataset), and the Metrics dock says
which images it includes, so the figures here and the CLI's agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QWidget

from app.gui.features.base import Feature, MenuEntry
from app.gui.metrics_view import MetricsView
from app.gui.predictions import Predictions
from app.review.threshold import ScoreSet
from engine.client import JobView
from engine.datasets.imageio import read_mask
from engine.datasets.splits import resolve_splits
from engine.errors import DefectScopeError
from engine.home import default_data_home

MAX_PRO_IMAGES = 2000  # maps and masks held in memory for the PRO curve (256 px each: ~260 MB at most)
METRICS_SPLIT = "test"  # as `defectscope eval` (engine/evaluate.py)


if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class ScoringFeature(Feature):
    predictions_loaded = Signal(int)  # images scored

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.predictions: Predictions | None = None
        self.score_set: ScoreSet | None = None  # every scored image: the threshold's impact on the review
        self.model_threshold = 0.5
        self.metrics_view = MetricsView()
        window.review.set_threshold(self.model_threshold)
        window.review.threshold_changed.connect(self.set_threshold)
        self.metrics_view.threshold_changed.connect(self.set_threshold)
        window.browser.current_changed.connect(self._on_current_changed)
        window.dataset_loaded.connect(self._on_dataset)

    def dock_widget(self) -> QWidget:
        return self.metrics_view

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Score dataset with the active model", self.score_dataset, "Ctrl+R")]

    # ----------------------------------------------------------------- what other parts ask
    def score_of(self, key: str) -> float | None:
        return self.predictions.scores.get(key) if self.predictions else None

    def anomaly_map(self, key: str) -> np.ndarray | None:
        return self.predictions.anomaly_map(key) if self.predictions else None

    # ----------------------------------------------------------------- scoring
    def score_dataset(self) -> None:
        w = self.window
        model_dir = w.models.model_dir
        if w.dataset is None or model_dir is None:
            w.show_error("Open a dataset and choose a model (Models panel or Model ▸ Use model folder) first.")
            return
        if w.models.model_info is not None and w.models.model_info.task == "detector":
            # A detector's per-image score is only its top box: Detect shows the boxes, classes and metrics.
            w.show_error(f"{model_dir.name} is a box detector: use Model ▸ Detect defects (Ctrl+D) instead.")
            return
        # On a remote engine the link names a model it made by its ref and uploads any other folder.
        params = {"model": w.link.engine_path(model_dir, "model"), "data": str(w.dataset.root)}
        if w.category:
            params["category"] = w.category
        w.link.submit("score_dataset", params, on_finished=self._on_scored,
                      on_error=lambda msg: w.show_error(f"Scoring could not start: {msg}"))
        w.status_message.emit("Scoring submitted to the engine (see Jobs).")

    def _on_scored(self, job: JobView) -> None:
        w = self.window
        if job.state == "failed":
            w.show_error(f"Scoring failed: {job.error}")
        if job.state != "succeeded":
            return
        notes = (job.result or {}).get("notes") or []
        if notes:
            w.show_banner("Scores: " + " ".join(notes), "warning", tag="scores")
        else:
            w.hide_banner_if("scores")
        # Scores of an uploaded dataset name the engine's copy of it: they are about the folder sent from here.
        source = w.link.local_source(job, "data")
        w.link.fetch_artifact_dir(job, "predictions", lambda folder: self.load_predictions(folder, source),
                                  lambda msg: w.show_error(f"Cannot fetch the scores: {msg}"))

    def load_predictions(self, folder: Path, data_root: Path | None = None) -> None:
        """Show a predictions folder; `data_root`: the local dataset they were made on when the engine scored an
        uploaded copy of it (their own `data` names the engine's folder)."""

        def load() -> Predictions:
            preds = Predictions.load(Path(folder))
            return replace(preds, data=str(data_root)) if data_root is not None else preds

        self.window.background(load, lambda preds: self._on_predictions(preds, data_root), self.window.show_error)

    def maybe_load_cached(self) -> None:
        """Predictions the active model already made for this dataset (a finished score job) come back at once."""
        w = self.window
        if w.models.model_dir is None or w.dataset is None:
            return
        folder, data_root = _predictions_cache(w.models.model_dir, w.dataset.root)
        if (folder / "scores.json").is_file():
            self.load_predictions(folder, data_root)

    def _on_dataset(self, _root: str) -> None:
        self.predictions = None
        self.score_set = None
        self.metrics_view.set_results({}, {}, {})
        self.metrics_view.set_scope("")
        self.window.review.show_impact(None)
        self.maybe_load_cached()

    def _on_predictions(self, preds: Predictions, uploaded_from: Path | None = None) -> None:
        w = self.window
        if w.dataset is None:
            return
        scores = {k: v for k, v in preds.scores.items() if k in w.samples}
        if not preds.is_for(w.dataset.root, w.category) or not scores:
            # e.g. a scoring job that finished after another dataset was opened
            w.status_message.emit(f"Scores in {preds.folder} are for {preds.data or 'another dataset'}, "
                                  f"not {w.dataset.root}: not shown.")
            return
        self.predictions = preds
        if w.models.model_dir is not None:
            _remember_predictions(w.models.model_dir, w.dataset.root, preds.folder, uploaded_from)
        self.model_threshold = preds.threshold
        labels = {k: w.samples[k].label for k in scores}
        defect_types = {k: w.samples[k].defect_type for k in scores}
        self.score_set = ScoreSet(scores, labels, defect_types)
        w.browser.model.set_scores(scores)
        w.browser.set_sort_mode("score")
        self._show_metrics(preds, scores)
        values = list(scores.values())
        w.review.set_range(float(np.floor(min(values) * 10) / 10), float(np.ceil(max(values) * 10) / 10))
        self.set_threshold(preds.threshold)
        if w.shown_key:
            self.show_heatmap(w.shown_key)
            w.review.show_score(scores.get(w.shown_key), w.review.threshold())
        w.status_message.emit(f"{len(scores)} images scored; sorted by score, highest first.")
        self.predictions_loaded.emit(len(scores))

    # ----------------------------------------------------------------- metrics
    def metric_keys(self, preds: Predictions, scores: dict[str, float]) -> list[str]:
        """The scored images the metrics count: test split only, as `defectscope eval`."""
        recorded = {k: v for k, v in preds.splits.items() if v}  # the resolved split each item was scored with
        if len(recorded) < len(scores):  # predictions from before splits were recorded: resolve them here
            w = self.window
            by_path = {s.image_path: s.split for s in resolve_splits(list(w.samples.values()))}
            recorded = {k: by_path.get(s.image_path, s.split) for k, s in w.samples.items()} | recorded
        return [k for k in scores if recorded.get(k) == METRICS_SPLIT]

    def _show_metrics(self, preds: Predictions, scores: dict[str, float]) -> None:
        w = self.window
        keys = self.metric_keys(preds, scores)
        left_out = len(scores) - len(keys)
        self.metrics_view.set_scope(
            f"Metrics on the {len(keys)} test-split images (as `defectscope eval`)"
            + (f"; {left_out} training or unsplit images left out." if left_out else "."))
        test_scores = {k: scores[k] for k in keys}
        labels = {k: w.samples[k].label for k in keys}
        defect_types = {k: w.samples[k].defect_type for k in keys}
        self.metrics_view.set_results(test_scores, labels, defect_types)
        self.metrics_view.set_reference_threshold(preds.threshold)
        self._load_pixel_maps(preds, test_scores, labels, defect_types)

    def _load_pixel_maps(self, preds: Predictions, scores: dict, labels: dict, defect_types: dict) -> None:
        """Maps and masks for the PRO curve, read off the GUI thread at the maps' own (display) resolution."""
        samples = self.window.samples
        with_masks = [k for k in scores if samples[k].mask_path is not None or labels[k] == "good"]
        if not any(samples[k].mask_path is not None for k in with_masks):
            return
        keys = with_masks[:MAX_PRO_IMAGES]

        def load() -> tuple[dict, dict]:
            import cv2

            maps, masks = {}, {}
            for k in keys:
                amap = preds.anomaly_map(k)
                if amap is None:
                    continue
                path = samples[k].mask_path
                if path is None:
                    mask = np.zeros(amap.shape, bool)
                else:
                    try:
                        full = read_mask(path)
                    except DefectScopeError:
                        continue  # a broken mask leaves its image out of PRO; the browser already flags it
                    mask = cv2.resize(full.astype(np.uint8), amap.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
                maps[k], masks[k] = amap, mask
            return maps, masks

        def show(result: tuple[dict, dict]) -> None:
            if self.predictions is preds:  # not replaced meanwhile
                self.metrics_view.set_results(scores, labels, defect_types, *result)

        self.window.background(load, show, lambda msg: self.window.status_message.emit(f"PRO curve: {msg}"))

    # ----------------------------------------------------------------- display
    def _on_current_changed(self, key: str) -> None:
        if not key or self.window.browser.model.row_for_key(key) < 0:
            return
        self.show_heatmap(key)
        self.window.review.show_score(self.score_of(key), self.window.review.threshold())

    def show_heatmap(self, key: str) -> None:
        w = self.window
        amap = self.anomaly_map(key)
        w.image_view.set_heatmap(amap)
        w.cloud.show_anomaly(key, amap)
        w.image_view.set_threshold(w.review.threshold())

    def set_threshold(self, value: float) -> None:
        w = self.window
        w.review.set_threshold(value)
        self.metrics_view.set_threshold(value)
        w.image_view.set_threshold(value)
        key = w.shown_key
        if key is not None and self.predictions is not None:
            w.review.show_score(self.predictions.scores.get(key), value)
        w.review.show_impact(self.score_set.impact(value, self.model_threshold) if self.score_set else None)


def _predictions_index() -> QSettings:
    return QSettings(str(default_data_home() / "predictions.ini"), QSettings.Format.IniFormat)


def _index_key(model_dir: Path, data_root: Path) -> str:
    return hashlib.sha1(f"{Path(model_dir).resolve()}|{Path(data_root).resolve()}".encode()).hexdigest()[:20]


def _predictions_cache(model_dir: Path, data_root: Path) -> tuple[Path, Path | None]:
    """(the predictions folder, the local dataset it stands for when it scored an uploaded copy, else None)."""
    index, key = _predictions_index(), _index_key(model_dir, data_root)
    uploaded = str(index.value(f"{key}_uploaded_from", "") or "")
    return Path(str(index.value(key, "") or "/nonexistent")), Path(uploaded) if uploaded else None


def _remember_predictions(model_dir: Path, data_root: Path, folder: Path, uploaded_from: Path | None) -> None:
    index, key = _predictions_index(), _index_key(model_dir, data_root)
    index.setValue(key, str(folder))
    index.setValue(f"{key}_uploaded_from", str(uploaded_from or ""))
