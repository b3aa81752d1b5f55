"""The one predictions schema: what `infer` and `score_dataset` write and the GUI reads (no Qt).

A predictions folder holds `scores.json` and `maps/`, one anomaly map per item as float16 `.npy`, downsampled to at
most MAP_SIDE on its long side: the maps are for display (the model's own resolution is about that), and 10,000
full-size maps would not fit a disk.

scores.json
    {"model": str, "data": str, "category": str | null, "threshold": float, "score_units": str,
     "provider": str, "n_scored": int, "notes": [str],
     "items": {key: {"path": str, "score": float, "verdict": "OK" | "NG", "map": "maps/000000.npy",
                     "label": str | null, "defect_type": str | null, "split": str | null, ...}},
     "errors": {key: str}}
Keys are the dataset's sample keys (engine.datasets.keys) for a dataset, output names for loose files. `split` is
the RESOLVED split (engine.datasets.splits.resolve_splits, the rule `defectscope eval` uses), so "test" means the
images eval tests on; null for loose files. Writers may add fields to an item (infer adds "heatmap").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text

SCORES_FILE = "scores.json"
MAPS_DIR = "maps"
MAP_SIDE = 256


def small_map(amap: np.ndarray) -> np.ndarray:
    """The display copy of an anomaly map: float16, at most MAP_SIDE on its long side."""
    h, w = amap.shape
    scale = MAP_SIDE / max(h, w)
    if scale < 1:
        amap = cv2.resize(amap, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return amap.astype(np.float16)


@dataclass
class PredictionItem:
    path: str
    score: float
    verdict: str
    map: str | None = None  # relative to the predictions folder
    label: str | None = None
    defect_type: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # writer-specific fields (e.g. infer's "heatmap")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "score": round(self.score, 6), "verdict": self.verdict, "map": self.map,
                "label": self.label, "defect_type": self.defect_type, "split": self.split, **self.extra}


_ITEM_FIELDS = {"path", "score", "verdict", "map", "label", "defect_type", "split"}


class PredictionsWriter:
    """Collects items and their maps into a folder; `finish` writes scores.json atomically (the GUI never reads
    a half-written file)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        (self.folder / MAPS_DIR).mkdir(parents=True, exist_ok=True)
        self.items: dict[str, PredictionItem] = {}
        self.errors: dict[str, str] = {}

    def add(self, key: str, item: PredictionItem, anomaly_map: np.ndarray | None = None) -> PredictionItem:
        if anomaly_map is not None:
            item.map = f"{MAPS_DIR}/{len(self.items):06d}.npy"
            np.save(self.folder / item.map, small_map(anomaly_map))
        self.items[key] = item
        return item

    def error(self, key: str, reason: str) -> None:
        self.errors[key] = reason

    def finish(self, *, model: str | Path, threshold: float, provider: str, score_units: str = "normalised",
               data: str | Path | None = None, category: str | None = None, notes: list[str] | None = None) -> Path:
        return write_predictions(self.folder, model=model, threshold=threshold, provider=provider,
                                 items=self.items, errors=self.errors, score_units=score_units, data=data,
                                 category=category, notes=notes)


def write_predictions(folder: str | Path, *, model: str | Path, threshold: float, provider: str,
                      items: dict[str, PredictionItem], errors: dict[str, str] | None = None,
                      score_units: str = "normalised", data: str | Path | None = None,
                      category: str | None = None, notes: list[str] | None = None) -> Path:
    """Write FOLDER/scores.json (atomically); the maps named by the items must already be in FOLDER."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(Path(model).resolve()), "data": str(Path(data).resolve()) if data else "",
               "category": category, "threshold": threshold, "score_units": score_units, "provider": provider,
               "n_scored": len(items), "notes": list(notes or []),
               "items": {k: v.to_json() for k, v in items.items()}, "errors": dict(errors or {})}
    path = out / SCORES_FILE
    atomic_write_text(path, json.dumps(summary))  # the GUI never reads a half-written file
    return path


@dataclass
class Predictions:
    folder: Path
    threshold: float
    model: str
    data: str = ""  # the dataset root that was scored ("" for loose files)
    category: str | None = None
    items: dict[str, PredictionItem] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    provider: str = ""
    score_units: str = "normalised"
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: str | Path) -> Predictions:
        return read_predictions(folder)

    @property
    def scores(self) -> dict[str, float]:
        return {k: v.score for k, v in self.items.items()}

    @property
    def map_files(self) -> dict[str, str]:
        return {k: v.map for k, v in self.items.items() if v.map}

    @property
    def splits(self) -> dict[str, str | None]:
        """Each item's resolved split: the GUI's metrics take "test" to match `defectscope eval`."""
        return {k: v.split for k, v in self.items.items()}

    def is_for(self, root: Path, category: str | None) -> bool:
        """Whether these scores were made on this dataset: keys alone are not enough (MVTec categories share
        names like test/good/000.png)."""
        try:
            same_root = bool(self.data) and Path(self.data).resolve() == Path(root).resolve()
        except OSError:
            return False
        return same_root and (self.category or None) == (category or None)

    def anomaly_map(self, key: str) -> np.ndarray | None:
        item = self.items.get(key)
        if item is None or not item.map:
            return None
        path = (self.folder / item.map).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            return None  # a tampered scores.json must not make the GUI read arbitrary files
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError):
            return None


def _item(key: str, raw: dict) -> PredictionItem:
    score = float(raw["score"])
    if not math.isfinite(score):
        raise ValueError(f"score of {key} is {score}")
    return PredictionItem(str(raw.get("path", key)), score, str(raw.get("verdict", "")),
                          None if raw.get("map") is None else str(raw["map"]), raw.get("label"),
                          raw.get("defect_type"), raw.get("split"),
                          {k: v for k, v in raw.items() if k not in _ITEM_FIELDS})


def read_predictions(folder: str | Path) -> Predictions:
    """The predictions in FOLDER; a DefectScopeError naming scores.json when it is missing or malformed."""
    root = Path(folder)
    path = root / SCORES_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        items = {str(k): _item(str(k), v) for k, v in summary["items"].items()}
        return Predictions(root, float(summary["threshold"]), str(summary.get("model", "")),
                           str(summary.get("data") or ""), summary.get("category"), items,
                           {str(k): str(v) for k, v in dict(summary.get("errors") or {}).items()},
                           str(summary.get("provider", "")), str(summary.get("score_units", "normalised")),
                           [str(n) for n in summary.get("notes") or []])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DefectScopeError(f"{path}: unreadable predictions ({exc.__class__.__name__}: {exc})") from None
