"""The folder synthetic defects are kept in: an MVTec-layout training set tagged synthetic.

    <out>/synthetic.json           {"format": FORMAT, "synthetic": true, "method", "source", "seed",
                                    "per_type": {type: n}, "samples": [{"image", "mask", "type", "donor"}],
                                    "rejected": n (after curation: samples removed, engine.synthesis.curate)}
    <out>/train/good/              (empty: the layout's marker; good parts come from the real dataset)
    <out>/train/<type>/NNNN.png    synthetic defective images
    <out>/ground_truth/<type>/NNNN_mask.png
    <out>/test/                    (empty, always)

Every image is in train/: a synthetic sample is never in a test split, and `check_not_synthetic` refuses a
synthetic set wherever a model is evaluated or its held-out images are drawn. Any reader of the MVTec layout loads
it, so `train segmentation --extra <out>` (and every other trainer that takes a dataset) uses it as it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import DatasetError
from engine.fsutil import atomic_write_text

FORMAT = "defectscope-synthetic-set/1"
MANIFEST_FILE = "synthetic.json"
TRAIN_DIR = "train"
MASK_DIR = "ground_truth"


def is_synthetic_set(folder: str | Path) -> bool:
    """Whether `folder` (or the category folder above a loaded dataset) is a synthetic set."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def check_not_synthetic(folder: str | Path, what: str) -> None:
    """DatasetError when `folder` is a synthetic set: synthetic images never measure a model."""
    if is_synthetic_set(folder):
        raise DatasetError(f"{folder}: a synthetic set ({MANIFEST_FILE}) cannot be {what}; synthetic samples only "
                           "train (--extra)")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable synthetic-set manifest ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a DefectScope synthetic-set manifest (format {FORMAT} expected)")
    return meta


SAMPLE_FIELDS = ("image", "mask", "type")  # what every manifest row holds (and "donor", informative only)


def manifest_samples(manifest: dict[str, Any], path: str | Path) -> list[dict[str, Any]]:
    """The manifest's "samples", each checked to name its image, mask and type (DatasetError naming the row)."""
    rows = manifest.get("samples")
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: \"samples\" must be a list of samples")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: samples[{i}] must be an object with {', '.join(SAMPLE_FIELDS)}")
        for field in SAMPLE_FIELDS:
            if not isinstance(row.get(field), str) or not row[field]:
                raise DatasetError(f"{path}: samples[{i}].{field} is missing or not a text")
    return rows


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", data)
    if not ok:
        raise DatasetError(f"{path}: cannot encode the synthetic image")
    buf.tofile(str(path))


def write_synthetic_set(out: str | Path, samples: Iterable[tuple[np.ndarray, np.ndarray, str, str]],
                        info: dict[str, Any]) -> dict[str, Any]:
    """Write (image, bool mask, type, donor) samples to `out` (which must not hold anything yet); the manifest
    last, so a folder with one is complete. Returns the manifest."""
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root}: the synthetic set's folder is not empty (choose a new one)")
    (root / TRAIN_DIR / "good").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(exist_ok=True)
    rows: list[dict[str, str]] = []
    per_type: dict[str, int] = {}
    for image, mask, defect_type, donor in samples:
        if not mask.any():
            continue  # nothing was painted (a shape clipped away): no label to learn from
        n = per_type.get(defect_type, 0)
        stem = f"{n:04d}"
        image_rel = f"{TRAIN_DIR}/{defect_type}/{stem}.png"
        mask_rel = f"{MASK_DIR}/{defect_type}/{stem}_mask.png"
        _write_png(root / image_rel, image)
        _write_png(root / mask_rel, mask.astype(np.uint8) * 255)
        rows.append({"image": image_rel, "mask": mask_rel, "type": defect_type, "donor": donor})
        per_type[defect_type] = n + 1
    if not rows:
        raise DatasetError(f"{root}: no synthetic sample was made")
    manifest = {"format": FORMAT, "synthetic": True, **info, "per_type": per_type, "samples": rows}
    write_manifest(root, manifest)
    return manifest


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """(Re)write the set's manifest atomically: a reader sees the old one or the new one, never half of it."""
    atomic_write_text(Path(folder) / MANIFEST_FILE, json.dumps(manifest, indent=2))
