"""Score every image of a dataset with an exported model: the engine job behind the GUI's "Score dataset".

Writes `scores.json` (score, verdict, label, defect type and split per image, keyed like the GUI's browser)
and one anomaly map per image as float16 `.npy`, downsampled to at most MAP_SIDE on its long side: the maps
are for display (the model's own resolution is about that), and 10,000 full-size maps would not fit a disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from engine.datasets import load_dataset
from engine.datasets.imageio import read_image
from engine.datasets.keys import sample_key
from engine.datasets.types import Sample
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


class _Scorer(Protocol):
    threshold: float
    provider: str
    notes: list[str]  # what the engineer should know about how the scores were made (shown with the job)

    def score(self, sample: Sample) -> tuple[float, np.ndarray]: ...


SCORERS: dict[str, Callable[[Path, str], _Scorer]] = {}  # model metadata file name -> scorer factory


def register_scorer(metadata_file: str) -> Callable[[Callable[[Path, str], _Scorer]], Callable[[Path, str], _Scorer]]:
    def deco(factory: Callable[[Path, str], _Scorer]) -> Callable[[Path, str], _Scorer]:
        SCORERS[metadata_file] = factory
        return factory

    return deco


@register_scorer("model.json")
class _ImageScorer:
    """The memory-bank image model (model.onnx)."""

    def __init__(self, model_dir: Path, device: str) -> None:
        self.model = AnomalyModel(model_dir, device=device)
        self.threshold, self.provider = self.model.threshold, self.model.provider
        self.notes: list[str] = []

    def score(self, sample: Sample) -> tuple[float, np.ndarray]:
        pred = self.model.predict(read_image(sample.image_path))
        return pred.score, pred.anomaly_map


@register_scorer("multimodal.json")
class _MultimodalScorer:
    """The RGB + 3D model: each part is scored from what it has (both, or the one sensor with a stand-in)."""

    def __init__(self, model_dir: Path, device: str) -> None:
        from engine.runtime.multimodal import MultimodalModel

        self.model = MultimodalModel(model_dir)
        self.threshold = float(self.model.meta.get("threshold", 3.0))
        self.provider = "CPUExecutionProvider"
        self.cache = Path(model_dir) / "cache" / "clouds"
        self.notes: list[str] = []
        # 3D features need open3d (the '3d' extra), which the inspection-PC installer leaves out (900 MB). Such
        # an install still scores RGB + 3D parts, from the image with the distilled 3D stand-in (the model's
        # missing-sensor mode), and says so, rather than failing every part.
        try:
            import open3d  # noqa: F401

            self.geometry = True
        except ImportError:
            self.geometry = False

    def score(self, sample: Sample) -> tuple[float, np.ndarray]:
        from engine.datasets.pointcloud import cloud_path

        xyz = cloud_path(sample.extra)
        if xyz is not None and not self.geometry:
            xyz = None
            if not self.notes:
                self.notes.append("open3d is not installed with this engine: parts were scored from their RGB image "
                                  "with the distilled 3D stand-in, not from their point clouds (install the '3d' "
                                  "extra to use both sensors)")
        pred = self.model.predict(sample.image_path, xyz, cache_dir=self.cache)
        return pred.score, pred.anomaly_map


def load_scorer(model_dir: str | Path, device: str = "auto") -> _Scorer:
    folder = Path(model_dir)
    for meta_file, factory in SCORERS.items():
        if (folder / meta_file).is_file():
            return factory(folder, device)
    raise DefectScopeError(f"{folder}: not a DefectScope model folder (none of {', '.join(SCORERS)})")


def score_dataset(
    model_dir: str | Path, data: str | Path, out: str | Path, category: str | None = None,
    splits: list[str] | None = None, device: str = "auto", progress: Progress | None = None,
) -> dict:
    model = load_scorer(model_dir, device)
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
            score, amap = model.score(sample)
        except DefectScopeError as exc:
            errors[key] = str(exc)
            continue
        map_name = f"maps/{n:06d}.npy"
        np.save(out / map_name, _small_map(amap))
        items[key] = {"score": round(score, 6), "verdict": "NG" if score >= model.threshold else "OK",
                      "map": map_name, "label": sample.label, "defect_type": sample.defect_type,
                      "split": sample.split}
        if n % 5 == 0 or n == len(samples) - 1:
            report((n + 1) / len(samples), f"scored {n + 1}/{len(samples)} images")
    summary = {"model": str(Path(model_dir).resolve()), "data": str(root.resolve()), "category": category,
               "threshold": model.threshold, "provider": model.provider, "n_scored": len(items),
               "items": items, "errors": errors, "notes": model.notes}
    tmp = out / f".{SCORES_FILE}.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, out / SCORES_FILE)  # the GUI never reads a half-written file
    if model.notes:
        report(1.0, " ".join(model.notes))
    return {"scores": str(out / SCORES_FILE), "n_scored": len(items), "n_errors": len(errors),
            "provider": model.provider, "notes": model.notes}


def score_dataset_job(params: ScoreDatasetParams, progress: Progress) -> dict:
    return score_dataset(params.model, params.data, params.out, params.category, params.splits, params.device,
                         progress)
