"""Evaluate an exported model on a dataset's test split through ONNX Runtime (the inspection path).

Which evaluation runs is chosen by the model's task (`EVALUATORS`): scoring models (anomaly) through the one scoring
loop (engine.scoring) with anomaly metrics, detectors with COCO metrics on the detection split
(engine.detection_eval), defect segmentation models with mIoU and IoU per class on the images they did not train on
(engine.segmentation_eval).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets.imageio import read_mask
from engine.datasets.splits import resolve_splits
from engine.detection_eval import evaluate_detector
from engine.errors import DatasetError, DefectScopeError
from engine.jobs.kinds import EvalParams
from engine.jobs.registry import Progress
from engine.metrics import evaluate_anomaly
from engine.reports import write_report
from engine.runtime.model_format import ModelInfo, open_model, read_model_info
from engine.scoring import Scored, is_ng, score_samples
from engine.segmentation_eval import evaluate_segmentation


def evaluate(
    model_dir: str | Path,
    data_root: str | Path,
    category: str | None = None,
    report_path: str | Path | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    prompts: str | Path | None = None,
) -> dict:
    """Metrics of the model on the labelled test images; writes the JSON report when `report_path` is given.

    The evaluation of the model's task (EVALUATORS); any other scoring model is evaluated as an image scorer.
    `prompts` (an open-set detector's classes to search for) applies to detectors only.
    """
    info = read_model_info(model_dir)
    run = EVALUATORS.get(info.task, _evaluate_scores)
    return run(info, data_root, category, report_path, device, progress, prompts)


def _evaluate_scores(
    info: ModelInfo,
    data_root: str | Path,
    category: str | None,
    report_path: str | Path | None,
    device: str,
    progress: Progress | None,
    prompts: str | Path | None = None,
) -> dict:
    """Anomaly metrics of a scoring model: an RGB + 3D model scores each part from its image and point cloud, as in
    the workbench."""
    if prompts is not None:
        raise DefectScopeError(f"prompts {prompts}: only an open-set detector takes prompts; {info.folder} is a "
                               f"{info.kind} model")
    model_dir = info.folder
    model = open_model(info, device)
    dataset = load_dataset(data_root, category=category)
    # The same automatic split as training, for datasets without one (never tests on trained-on images).
    tests = [s for s in resolve_splits(dataset.samples) if s.split == "test" and s.label in (GOOD, DEFECTIVE)]
    if not tests:
        what = f"category '{category}'" if category else "the dataset"
        raise DatasetError(f"{data_root}: no labelled test images for {what} (test split is empty)")

    scores, labels, maps, masks, per_image, issues, latencies = [], [], [], [], [], [], []
    any_mask = any(s.mask_path is not None for s in tests if s.label == DEFECTIVE)
    for r in score_samples(model, tests, progress=progress, message=lambda d, t: f"evaluated {d}/{t}"):
        if not isinstance(r, Scored):
            issues.append(r.error)
            continue
        sample = r.sample
        try:
            mask = None
            if sample.label == DEFECTIVE and sample.mask_path is not None:
                mask = _mask_at(read_mask(sample.mask_path, shape=r.image.shape[:2]), r.anomaly_map.shape[:2])
        except DefectScopeError as exc:
            issues.append(str(exc))
            continue
        latencies.append(r.latency_ms)
        scores.append(r.score)
        labels.append(1 if sample.label == DEFECTIVE else 0)
        if any_mask and (sample.label == GOOD or mask is not None):
            maps.append(r.anomaly_map.astype(np.float32, copy=False))
            masks.append(mask if mask is not None else np.zeros(r.anomaly_map.shape[:2], dtype=bool))
        per_image.append(
            {
                "path": str(sample.image_path),
                "label": sample.label,
                "defect_type": sample.defect_type,
                "score": round(r.score, 6),
                "verdict": r.verdict,
            }
        )
    if not scores:
        raise DatasetError(f"{data_root}: none of the {len(tests)} test images could be read")

    try:
        metrics = evaluate_anomaly(scores, labels, maps or None, masks or None)
    except ValueError as exc:  # e.g. a test split with one class only
        metrics = {"image_auroc": None, "pixel_auroc": None, "aupro": None, "f1_max": None, "threshold": None}
        issues.append(f"metrics: {exc}")
    # The first call includes ORT's lazy initialisation; the median over the rest is the steady state.
    steady = latencies[1:] if len(latencies) > 1 else latencies
    result = {
        **metrics,
        "n_test": len(scores),
        "n_good": int(len(labels) - sum(labels)),
        "n_defective": int(sum(labels)),
        "latency_ms": round(float(np.median(steady)), 3),
        "provider": model.provider,
        "model_kind": model.info.kind,
        "score_units": model.info.score_units,
        "notes": list(model.notes),
        "model_threshold": model.threshold,
        "at_model_threshold": _confusion(scores, labels, model.threshold),
        "per_defect_type": _per_defect(per_image),
        "category": category,
        "model": str(Path(model_dir).resolve()),
        "data": str(Path(data_root).resolve()),
        "issues": issues,
        "per_image": per_image,
    }
    write_report(result, report_path)
    return result


def _confusion(scores: list[float], labels: list[int], threshold: float) -> dict:
    y = np.asarray(labels, dtype=bool)
    pred = is_ng(np.asarray(scores), threshold)
    n_good, n_def = int((~y).sum()), int(y.sum())
    return {
        "false_positives": int((pred & ~y).sum()),
        "misses": int((~pred & y).sum()),
        "false_positive_rate": float((pred & ~y).sum() / n_good) if n_good else None,
        "recall": float((pred & y).sum() / n_def) if n_def else None,
    }


def _mask_at(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The ground truth at the map's size: the image models' maps are at image size, the RGB + 3D model's on its
    own square grid (nearest-neighbour, as its own evaluation does)."""
    if mask.shape == tuple(shape):
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def _per_defect(per_image: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for row in per_image:
        if row["label"] != DEFECTIVE:
            continue
        d = out.setdefault(row["defect_type"] or "unknown", {"n": 0, "detected": 0})
        d["n"] += 1
        d["detected"] += row["verdict"] == "NG"
    for d in out.values():
        d["recall"] = d["detected"] / d["n"]
    return out


Evaluator = Callable[[ModelInfo, str | Path, str | None, str | Path | None, str, Progress | None, str | Path | None],
                     dict]
# model task -> its evaluation; tasks not listed are evaluated as image scorers (open_model refuses non-scorers)
EVALUATORS: dict[str, Evaluator] = {"detector": evaluate_detector, "segmentation": evaluate_segmentation}


def eval_job(params: EvalParams, progress: Progress) -> dict:
    result = evaluate(params.model, params.data, params.category, params.report, params.device, progress,
                      params.prompts)
    return {k: v for k, v in result.items() if k != "per_image"}
