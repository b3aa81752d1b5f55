"""Evaluating the RGB + 3D model on a test split in every sensor situation (report modes a-e).

Features are computed once per part (both modalities and both stand-ins) and every mode is fused from them,
so the modes differ only in what they use, not in noise. Per mode: image AUROC, pixel AUROC, AU-PRO (to FPR
0.3, MVTec's definition), image AUROC per defect type against the good parts, each part's score (in the order of
"types") and the mode's fusion weights. Parts go through the one
scoring loop (engine.scoring); an unreadable part stops the evaluation (every mode needs every part).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets.imageio import read_image, read_mask
from engine.datasets.pointcloud import cloud_path
from engine.datasets.types import Sample
from engine.errors import DatasetError, ModelError
from engine.jobs.registry import Progress
from engine.metrics import evaluate_anomaly, image_auroc
from engine.runtime.model_format import BaseScorer, ModelInfo, ScoringInput, read_model_info
from engine.runtime.multimodal import MODES, SOURCES, MultimodalModel, MultimodalPrediction
from engine.scoring import Scored, score_samples


class _AllModes(BaseScorer):
    """Scores a part once per source and fuses every mode from the same features; the loop yields right after
    each `predict`, so `last` holds that part's prediction per mode when its result is handled."""

    def __init__(self, info: ModelInfo, model: MultimodalModel, modes: Sequence[str],
                 cache_dir: str | Path | None) -> None:
        self.info, self.model, self.modes, self.cache_dir = info, model, list(modes), cache_dir
        self.threshold = float(info.threshold if info.threshold is not None else 3.0)
        self.provider = "CPUExecutionProvider"
        self.notes: list[str] = []
        self.last: dict[str, MultimodalPrediction] = {}

    def read(self, sample: Sample) -> ScoringInput:
        return ScoringInput(read_image(sample.image_path), sample.image_path, cloud_path(sample.extra))

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        rows, _ = self.model.rows(inputs.image, inputs.cloud_path, set(SOURCES), self.cache_dir)
        self.last = {m: self.model.fuse(rows, m) for m in self.modes}
        first = self.last[self.modes[0]]
        return first.score, first.anomaly_map


def evaluate_multimodal(model_dir: str | Path, data: str | Path, category: str | None = None,
                        modes: Sequence[str] = tuple(MODES), cache_dir: str | Path | None = None,
                        progress: Progress | None = None, stand_in_bank: str | None = None) -> dict[str, Any]:
    info = read_model_info(model_dir)
    if info.kind != "multimodal":
        raise ModelError(f"{info.folder}: a {info.kind} model, not an RGB + 3D model")
    model = MultimodalModel(info.folder)
    if stand_in_bank is not None:
        model.stand_in_bank = stand_in_bank
    ds = load_dataset(Path(data), category=category)
    test = [s for s in ds.samples if s.split == "test" and s.label in (GOOD, DEFECTIVE)]
    if not test:
        raise DatasetError(f"{data}: no labelled test parts to evaluate on")
    missing = [s.image_path for s in test if cloud_path(s.extra) is None]
    if missing:
        raise DatasetError(f"{missing[0]}: no point cloud for this test part ({len(missing)} parts without one)")
    size = model.map_size
    scores: dict[str, list[float]] = {m: [] for m in modes}
    maps: dict[str, list[np.ndarray]] = {m: [] for m in modes}
    labels, types, masks = [], [], []
    scorer = _AllModes(info, model, modes, cache_dir)
    for r in score_samples(scorer, test, progress=progress, message=lambda d, t: f"scored {d}/{t} test parts"):
        if not isinstance(r, Scored):
            raise DatasetError(r.error)
        s = r.sample
        for m in modes:
            scores[m].append(scorer.last[m].score)
            maps[m].append(scorer.last[m].anomaly_map)
        labels.append(int(s.label == DEFECTIVE))
        types.append(s.defect_type or "good")
        if s.mask_path is not None:
            gt = read_mask(s.mask_path)
            masks.append(cv2.resize(gt.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
        else:
            masks.append(None)
    lab = np.array(labels)
    kinds = sorted({t for t, y in zip(types, labels, strict=True) if y})
    result: dict[str, Any] = {"n_test": len(test), "n_defective": int(lab.sum()), "modes": {},
                              "stand_in_bank": model.stand_in_bank, "types": types,
                              "weights": {m: model.mode_weights(m) for m in modes}}
    for m in modes:
        metrics = evaluate_anomaly(scores[m], lab, maps[m], masks)
        sc = np.array(scores[m])
        per_type = {}
        for k in kinds:
            sel = np.array([t == k or y == 0 for t, y in zip(types, labels, strict=True)])
            per_type[k] = round(image_auroc(sc[sel], lab[sel]), 4)
        result["modes"][m] = {"image_auroc": round(metrics["image_auroc"], 4),
                              "pixel_auroc": None if metrics["pixel_auroc"] is None else round(
                                  metrics["pixel_auroc"], 4),
                              "aupro": None if metrics["aupro"] is None else round(metrics["aupro"], 4),
                              "image_auroc_per_type": per_type,
                              "scores": [round(float(v), 5) for v in sc]}
    return result
