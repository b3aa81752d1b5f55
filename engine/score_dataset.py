"""Score every image of a dataset with an exported model: the engine job behind the GUI's "Score dataset".

Writes `scores.json` (score, verdict, label, defect type and split per image, keyed like the GUI's browser)
and one anomaly map per image as float16 `.npy`, downsampled to at most MAP_SIDE on its long side: the maps
are for display (the model's own resolution is about that), and 10,000 full-size maps would not fit a disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from engine.datasets import load_dataset
from engine.datasets.imageio import read_image
from engine.datasets.keys import sample_key
from engine.errors import DefectScopeError
from engine.jobs.kinds import ScoreDatasetParams
from engine.jobs.registry import Progress
from engine.runtime import AnomalyModel

MAP_SIDE = 256
SCORES_FILE = "scores.json"


def _small_map(amap: np.ndarray) -> np.ndarray:
    h, w = amap.shape
    scale = MAP_SIDE / max(h, w)
    if scale < 1:
        amap = cv2.resize(amap, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return amap.astype(np.float16)


def score_dataset(
    model_dir: str | Path, data: str | Path, out: str | Path, category: str | None = None,
    splits: list[str] | None = None, device: str = "auto", progress: Progress | None = None,
) -> dict:
    model = AnomalyModel(model_dir, device=device)
    root = Path(data)
    ds = load_dataset(root, category=category)
    samples = [s for s in ds.samples if splits is None or s.split in splits]
    if not samples:
        raise DefectScopeError(f"{root}: no images to score" + (f" in splits {', '.join(splits)}" if splits else ""))
    out = Path(out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    items: dict[str, dict] = {}
    errors = {sample_key(root, i.path): i.reason for i in ds.issues}
    report = progress or (lambda _f, _m: None)
    for n, sample in enumerate(samples):
        key = sample_key(root, sample)
        try:
            pred = model.predict(read_image(sample.image_path))
        except DefectScopeError as exc:
            errors[key] = str(exc)
            continue
        map_name = f"maps/{n:06d}.npy"
        np.save(out / map_name, _small_map(pred.anomaly_map))
        items[key] = {"score": round(pred.score, 6), "verdict": "NG" if pred.is_anomalous else "OK",
                      "map": map_name, "label": sample.label, "defect_type": sample.defect_type,
                      "split": sample.split}
        if n % 5 == 0 or n == len(samples) - 1:
            report((n + 1) / len(samples), f"scored {n + 1}/{len(samples)} images")
    summary = {"model": str(Path(model_dir).resolve()), "data": str(root.resolve()), "category": category,
               "threshold": model.threshold, "provider": model.provider, "n_scored": len(items),
               "items": items, "errors": errors}
    tmp = out / f".{SCORES_FILE}.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, out / SCORES_FILE)  # the GUI never reads a half-written file
    return {"scores": str(out / SCORES_FILE), "n_scored": len(items), "n_errors": len(errors),
            "provider": model.provider}


def score_dataset_job(params: ScoreDatasetParams, progress: Progress) -> dict:
    return score_dataset(params.model, params.data, params.out, params.category, params.splits, params.device,
                         progress)
