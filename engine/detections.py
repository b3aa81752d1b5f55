"""The one detections schema: what a detector run writes (`defectscope infer` on loose images, the detect_dataset
job on a dataset) and the workbench reads (no Qt).

A detections folder holds `detections.json`:

    {"model": str, "data": str, "category": str | null, "classes": [str], "threshold": float, "provider": str,
     "notes": [str], "n_images": int,
     "items": {key: {"path": str, "split": str | null,
                     "boxes": [[x0, y0, x1, y1], ...], "scores": [float, ...], "classes": [str, ...],
                     "latency_ms": float,
                     "truth": {"boxes": [[x0, y0, x1, y1], ...], "classes": [str, ...]} | null, ...}},
     "errors": {key: str}}

Boxes are in original image pixels (x1, y1 exclusive), every box the detector returned (scores descending), not
only those at the threshold: the workbench's threshold slider redraws without running the model again. Keys are
the dataset's sample keys (engine.datasets.keys) for a dataset, output names for loose files. `split` is the
detection split (engine.datasets.detection, the one training and `defectscope eval` use); `truth` is the image's
labelled boxes in that view (an empty list: labelled, no defect), null when the image has no labels. Writers may
add fields to an item (infer adds "drawn").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text

DETECTIONS_FILE = "detections.json"
_ITEM_FIELDS = {"path", "split", "boxes", "scores", "classes", "latency_ms", "truth"}


@dataclass
class Truth:
    boxes: np.ndarray  # [N, 4] float32
    classes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"boxes": np.round(self.boxes, 2).tolist(), "classes": list(self.classes)}


@dataclass
class DetectionItem:
    path: str
    boxes: np.ndarray  # [N, 4] float32, scores descending
    scores: np.ndarray  # [N] float32
    classes: list[str]
    split: str | None = None
    latency_ms: float = 0.0
    truth: Truth | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def above(self, threshold: float) -> np.ndarray:
        """Indices of the boxes at or above `threshold` (the one rule: a box counts when score >= threshold)."""
        return np.flatnonzero(self.scores >= threshold)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "split": self.split, "boxes": np.round(self.boxes, 2).tolist(),
                "scores": np.round(self.scores, 5).tolist(), "classes": list(self.classes),
                "latency_ms": round(float(self.latency_ms), 3),
                "truth": self.truth.to_json() if self.truth is not None else None, **self.extra}


@dataclass
class Detections:
    folder: Path
    model: str
    classes: list[str]
    threshold: float
    provider: str = ""
    data: str = ""  # the dataset root that was searched ("" for loose files)
    category: str | None = None
    notes: list[str] = field(default_factory=list)
    items: dict[str, DetectionItem] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def is_for(self, root: Path, category: str | None) -> bool:
        """Whether these detections were made on this dataset (keys alone are not enough)."""
        return bool(self.data) and Path(self.data).resolve() == Path(root).resolve() and self.category == category


def on_dataset(dets: Detections, image_paths: dict[str, Path], root: str | Path,
               category: str | None = None) -> Detections:
    """The items of `dets` (made on any folders, e.g. a pseudo-box pool) that are images of an open dataset,
    keyed by its sample keys (`image_paths`: key -> image path) and marked as made on it, so the workbench shows
    them; the items carry no labels to judge against (their classes are not the dataset's)."""
    key_of = {}
    for key, path in image_paths.items():
        try:
            key_of[str(Path(path).resolve())] = key
        except OSError:
            continue
    items = {}
    for item in dets.items.values():
        key = key_of.get(str(Path(item.path).resolve()))
        if key is not None:
            items[key] = replace(item, truth=None)
    # errors stay with the source: their keys name its images, not the dataset's
    return replace(dets, data=str(Path(root).resolve()), category=category, items=items, errors={})


def relocated(dets: Detections, moves: dict[Path, Path]) -> Detections:
    """`dets` with the image paths under each key folder of `moves` moved under its value: detections a remote
    engine made on its uploaded copy of a folder (key) named by the folder of this computer it was sent from."""
    if not moves:
        return dets
    items = {}
    for key, item in dets.items.items():
        path = Path(item.path)
        for there, here in moves.items():
            for engine_side in dict.fromkeys((Path(there), Path(there).resolve())):  # the pool's paths are resolved
                if path.is_relative_to(engine_side):
                    item = replace(item, path=str(Path(here) / path.relative_to(engine_side)))
                    break
            else:
                continue
            break
        items[key] = item
    return replace(dets, items=items)


def write_detections(folder: str | Path, *, model: str | Path, classes: list[str], threshold: float, provider: str,
                     items: dict[str, DetectionItem], errors: dict[str, str] | None = None,
                     data: str | Path | None = None, category: str | None = None,
                     notes: list[str] | None = None) -> Path:
    """Write FOLDER/detections.json atomically (the GUI never reads a half-written file)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(Path(model).resolve()), "data": str(Path(data).resolve()) if data else "",
               "category": category, "classes": list(classes), "threshold": float(threshold),
               "provider": provider, "notes": list(notes or []), "n_images": len(items),
               "items": {k: v.to_json() for k, v in items.items()}, "errors": dict(errors or {})}
    path = out / DETECTIONS_FILE
    atomic_write_text(path, json.dumps(summary))
    return path


def _boxes(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value if value else np.zeros((0, 4)), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be a list of [x0, y0, x1, y1]")
    return arr


def read_detections(folder: str | Path) -> Detections:
    """Read FOLDER/detections.json; a missing or malformed file is a DefectScopeError naming the file and field."""
    path = Path(folder) / DETECTIONS_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DefectScopeError(f"{path}: cannot read detections ({exc})") from exc
    try:
        model, classes, threshold = str(raw["model"]), [str(c) for c in raw["classes"]], float(raw["threshold"])
        items = {}
        for key, it in raw["items"].items():
            where = f"items.{key}"
            truth = it.get("truth")
            scores = np.asarray(it.get("scores", []), np.float32).reshape(-1)
            item = DetectionItem(
                path=str(it["path"]), boxes=_boxes(it.get("boxes"), where), scores=scores,
                classes=[str(c) for c in it.get("classes", [])], split=it.get("split"),
                latency_ms=float(it.get("latency_ms", 0.0)),
                truth=None if truth is None else Truth(_boxes(truth.get("boxes"), f"{where}.truth"),
                                                       [str(c) for c in truth.get("classes", [])]),
                extra={k: v for k, v in it.items() if k not in _ITEM_FIELDS})
            if not (len(item.boxes) == len(item.scores) == len(item.classes)):
                raise ValueError(f"{where}: boxes, scores and classes differ in length")
            if item.truth is not None and len(item.truth.boxes) != len(item.truth.classes):
                raise ValueError(f"{where}.truth: boxes and classes differ in length")
            items[str(key)] = item
        return Detections(folder=Path(folder), model=model, classes=classes, threshold=threshold, provider=str(raw.get("provider", "")),
                          data=str(raw.get("data") or ""), category=raw.get("category"),
                          notes=[str(n) for n in raw.get("notes", [])], items=items,
                          errors={str(k): str(v) for k, v in raw.get("errors", {}).items()})
    except KeyError as exc:
        raise DefectScopeError(f"{path}: field {exc.args[0]!r} is missing") from exc
    except (TypeError, ValueError) as exc:
        raise DefectScopeError(f"{path}: {exc}") from exc
