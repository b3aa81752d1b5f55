"""Evaluating the RGB + 3D model on a test split in every sensor situation (report modes a-e).

Features are computed once per part (both modalities and both stand-ins) and every mode is fused from them,
so the modes differ only in what they use, not in noise. Per mode: image AUROC, pixel AUROC, AU-PRO (to FPR
0.3, MVTec's definition), and image AUROC per defect type against the good parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets.imageio import read_mask
from engine.datasets.pointcloud import cloud_path
from engine.errors import DatasetError
from engine.jobs.registry import Progress
from engine.metrics import evaluate_anomaly, image_auroc
from engine.runtime.multimodal import MODES, SOURCES, MultimodalModel


def evaluate_multimodal(model_dir: str | Path, data: str | Path, category: str | None = None,
                        modes: Sequence[str] = tuple(MODES), cache_dir: str | Path | None = None,
                        progress: Progress | None = None, stand_in_bank: str | None = None) -> dict[str, Any]:
    report = progress or (lambda _f, _m: None)
    model = MultimodalModel(model_dir)
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
    for i, s in enumerate(test):
        rows, _ = model.rows(s.image_path, cloud_path(s.extra), set(SOURCES), cache_dir)
        for m in modes:
            pred = model.fuse(rows, m)
            scores[m].append(pred.score)
            maps[m].append(pred.anomaly_map)
        labels.append(int(s.label == DEFECTIVE))
        types.append(s.defect_type or "good")
        if s.mask_path is not None:
            gt = read_mask(s.mask_path)
            masks.append(cv2.resize(gt.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
        else:
            masks.append(None)
        report((i + 1) / len(test), f"scored {i + 1}/{len(test)} test parts")
    lab = np.array(labels)
    kinds = sorted({t for t, y in zip(types, labels, strict=True) if y})
    result: dict[str, Any] = {"n_test": len(test), "n_defective": int(lab.sum()), "modes": {},
                              "stand_in_bank": model.stand_in_bank}
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
                              "image_auroc_per_type": per_type}
    return result
