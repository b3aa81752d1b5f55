"""The pseudo-box run folder: what the pseudo_boxes job writes, and the one place that reads and writes it.

Backbone pretraining (anomaly-map targets), detector pretraining (one-class boxes) and the workbench (proposals)
all read a run folder OUT through this module, so its layout is defined here once:

pool.json
    {"format": FORMAT, "images": [absolute path, ...], "groups": [group name per image],
     "keys": [detections.json key per image], "sizes": [[H, W] per image],
     "group_roots": {group: folder}, "scorer": "mutual" | model folder, "threshold": float, "margin": float,
     "norm": {"lo": float, "hi": float}, "map_size": MAP_SIZE, "rule": {...}, "n_boxes": int,
     "excluded": {"count": int, "sources": [dataset root, ...]}, "unreadable": {path: reason},
     "seconds": float, ...}
    Written last: a folder without it is an unfinished run.

maps.npy
    float16 [N, MAP_SIZE, MAP_SIZE]: each image's anomaly map resized to MAP_SIZE x MAP_SIZE (aspect ignored),
    normalised to [0, 1] by the pool normalisation the threshold is in (norm: (m - lo) / (hi - lo), clipped);
    row i is pool.json images[i].

detections.json
    engine.detections' schema (classes ["anomaly"], every box with its score, threshold = the pool threshold),
    so the workbench browses the pseudo boxes as proposals.

coco/annotations/instances_train.json, coco/annotations/instances_val.json
    A COCO set (one category "anomaly", id 1) a detector trains on (`defectscope train detector --data OUT/coco`):
    absolute file_names, every pool image listed (one without a pseudo box is a negative), VAL_PERCENT % of the
    images in val by a hash of their file name (stable across runs and machines).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.datasets.detection_split import name_hash
from engine.detections import DetectionItem, write_detections
from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text

FORMAT = "defectscope-pseudo-pool/1"
POOL_FILE = "pool.json"
MAPS_FILE = "maps.npy"
COCO_DIR = "coco"
COCO_TRAIN_FILE = "annotations/instances_train.json"
COCO_VAL_FILE = "annotations/instances_val.json"
CLASS_NAME = "anomaly"
CATEGORY_ID = 1
MAP_SIZE = 64
VAL_PERCENT = 5
MUTUAL = "mutual"  # pool.json "scorer" of mutual scoring (otherwise the anomaly model's folder)


def coco_split(path: str | Path) -> str:
    """"validation" for about VAL_PERCENT % of images (by a hash of the file name), else "train"."""
    return "validation" if name_hash(Path(path).name) % 100 < VAL_PERCENT else "train"


@dataclass
class PoolRun:
    """Everything a run folder holds, as the job hands it to `write_pool`."""

    images: list[Path]
    groups: list[str]
    keys: list[str]  # one unique key per image (group/relative path), for detections.json
    sizes: list[tuple[int, int]]  # (H, W)
    maps: np.ndarray  # [N, MAP_SIZE, MAP_SIZE] float in [0, 1]
    boxes: list[np.ndarray]  # per image [n, 4] x0, y0, x1, y1 image pixels (x1, y1 exclusive), scores descending
    scores: list[np.ndarray]  # per image [n]
    threshold: float
    margin: float
    scorer: str  # MUTUAL or the anomaly model's folder
    metadata: dict[str, Any] = field(default_factory=dict)  # excluded, norm, rule, seconds, ... (pool.json)


@dataclass
class PseudoPool:
    """A run folder as read back: images, their groups and maps (row i of maps is images[i])."""

    folder: Path
    images: list[Path]
    groups: list[str]
    maps: np.ndarray  # [N, MAP_SIZE, MAP_SIZE] float32 in [0, 1]
    metadata: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def scorer(self) -> str:
        return str(self.metadata["scorer"])

    @property
    def coco_dir(self) -> Path:
        return self.folder / COCO_DIR


def _check_run(run: PoolRun) -> None:
    n = len(run.images)
    lengths = {"groups": len(run.groups), "keys": len(run.keys), "sizes": len(run.sizes), "boxes": len(run.boxes),
               "scores": len(run.scores), "maps": len(run.maps)}
    wrong = [f"{name} has {count}" for name, count in lengths.items() if count != n]
    if wrong:
        raise ValueError(f"pseudo pool: {n} images but " + ", ".join(wrong))
    if run.maps.shape[1:] != (MAP_SIZE, MAP_SIZE):
        raise ValueError(f"pseudo pool: maps must be [N, {MAP_SIZE}, {MAP_SIZE}], got {list(run.maps.shape)}")
    if len(set(run.keys)) != n:
        raise ValueError("pseudo pool: keys are not unique")


def _coco(run: PoolRun, split: str) -> dict[str, Any]:
    images, annotations = [], []
    for i, (path, (h, w)) in enumerate(zip(run.images, run.sizes, strict=True)):
        if coco_split(path) != split:
            continue
        images.append({"id": i + 1, "file_name": str(path), "width": int(w), "height": int(h)})
        for box, score in zip(np.asarray(run.boxes[i]).reshape(-1, 4), np.asarray(run.scores[i]).reshape(-1),
                              strict=True):
            x0, y0, x1, y1 = (round(float(v), 2) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORY_ID,
                                "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0, "score": round(float(score), 5)})
    return {"info": {"description": f"DefectScope pseudo boxes ({run.scorer} scoring)", "format": FORMAT},
            "images": images, "annotations": annotations,
            "categories": [{"id": CATEGORY_ID, "name": CLASS_NAME, "supercategory": "defect"}]}


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pool(out: str | Path, run: PoolRun) -> Path:
    """Write the run folder OUT (maps, detections, COCO, then pool.json last); returns OUT/pool.json."""
    _check_run(run)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / POOL_FILE).unlink(missing_ok=True)  # an interrupted rewrite must not look finished
    _save_npy(folder / MAPS_FILE, np.clip(np.asarray(run.maps, np.float32), 0.0, 1.0).astype(np.float16))

    items = {}
    for i, key in enumerate(run.keys):
        boxes = np.asarray(run.boxes[i], np.float32).reshape(-1, 4)
        scores = np.asarray(run.scores[i], np.float32).reshape(-1)
        items[key] = DetectionItem(path=str(run.images[i]), boxes=boxes, scores=scores,
                                   classes=[CLASS_NAME] * len(boxes), split=coco_split(run.images[i]),
                                   extra={"group": run.groups[i]})
    model = folder if run.scorer == MUTUAL else Path(run.scorer)
    write_detections(folder, model=model, classes=[CLASS_NAME], threshold=run.threshold,
                     provider=str(run.metadata.get("provider", "")), items=items,
                     notes=[f"pseudo boxes from {run.scorer} anomaly maps: threshold = mean of the pool's map "
                            f"maxima - {run.margin:g} (normalised maps)"])

    coco = folder / COCO_DIR
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(coco / COCO_TRAIN_FILE, json.dumps(_coco(run, "train")))
    atomic_write_text(coco / COCO_VAL_FILE, json.dumps(_coco(run, "validation")))

    n_boxes = int(sum(len(np.asarray(b).reshape(-1, 4)) for b in run.boxes))
    pool = {"format": FORMAT, **run.metadata,
            "images": [str(p) for p in run.images], "groups": list(run.groups), "keys": list(run.keys),
            "sizes": [[int(h), int(w)] for h, w in run.sizes], "scorer": run.scorer,
            "threshold": float(run.threshold), "margin": float(run.margin), "map_size": MAP_SIZE, "n_boxes": n_boxes}
    path = folder / POOL_FILE
    atomic_write_text(path, json.dumps(pool, indent=1))
    return path


def _field(raw: dict[str, Any], name: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if name not in raw:
        raise DefectScopeError(f"{path}: field '{name}' is missing")
    value = raw[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DefectScopeError(f"{path}: field '{name}' has the wrong type ({type(value).__name__})")
    return value


def read_pool(out: str | Path) -> PseudoPool:
    """Read a run folder; a missing or malformed file is a DefectScopeError naming the file and the field."""
    folder = Path(out)
    path = folder / POOL_FILE
    if not path.is_file():
        raise DefectScopeError(f"{path}: not found (not a pseudo-box run folder, or the run did not finish)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DefectScopeError(f"{path}: cannot read ({exc})") from None
    if not isinstance(raw, dict):
        raise DefectScopeError(f"{path}: not a JSON object")
    if raw.get("format") != FORMAT:
        raise DefectScopeError(f"{path}: field 'format' is {raw.get('format')!r}, expected {FORMAT!r}")
    images = _field(raw, "images", path, list)
    groups = _field(raw, "groups", path, list)
    _field(raw, "threshold", path, (int, float))
    _field(raw, "scorer", path, str)
    map_size = _field(raw, "map_size", path, int)
    if len(groups) != len(images):
        raise DefectScopeError(f"{path}: field 'groups' has {len(groups)} entries for {len(images)} images")
    maps_path = folder / MAPS_FILE
    try:
        maps = np.load(maps_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DefectScopeError(f"{maps_path}: cannot read the maps ({exc})") from None
    if maps.ndim != 3 or maps.shape != (len(images), map_size, map_size):
        raise DefectScopeError(f"{maps_path}: shape {list(maps.shape)}, expected [{len(images)}, {map_size}, "
                               f"{map_size}] (pool.json images x map_size)")
    return PseudoPool(folder, [Path(str(p)) for p in images], [str(g) for g in groups], maps.astype(np.float32), raw)


def pool_summary(pool: PseudoPool) -> str:
    """One line about a run folder (the CLI prints it)."""
    meta = pool.metadata
    return (f"{len(pool.images)} images in {len(set(pool.groups))} groups, {meta.get('n_boxes', 0)} pseudo boxes at "
            f"threshold {pool.threshold:.3f} ({pool.scorer} scoring), {meta.get('excluded', {}).get('count', 0)} "
            "evaluation images excluded")


__all__ = ["CATEGORY_ID", "CLASS_NAME", "COCO_DIR", "COCO_TRAIN_FILE", "COCO_VAL_FILE", "FORMAT", "MAPS_FILE",
           "MAP_SIZE", "MUTUAL", "POOL_FILE", "VAL_PERCENT", "PoolRun", "PseudoPool", "coco_split", "pool_summary",
           "read_pool", "write_pool"]
