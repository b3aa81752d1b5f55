"""Evaluate a detector on the test split of a box-labelled dataset (engine.datasets.detection's split, the one
training uses) with COCO metrics (engine.metrics.detection): the detector half of `defectscope eval`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.datasets.detection import load_detection_set
from engine.datasets.types import LoadIssue
from engine.detecting import Detected, detect_images
from engine.errors import DatasetError
from engine.jobs.registry import Progress
from engine.metrics.detection import detection_metrics
from engine.metrics.detection_match import BACKGROUND, confusion_matrix
from engine.reports import fmt_metric, write_report
from engine.runtime.model_format import ModelInfo
from engine.runtime.open_detector import detector_for


def evaluate_detector(
    info: ModelInfo,
    data_root: str | Path,
    category: str | None = None,
    report_path: str | Path | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    prompts: str | Path | None = None,
) -> dict:
    """map50, map50_95, ap50_per_class (the detector's classes), pr50_per_class (precision-recall curves at IoU
    0.5), confusion_matrix (at the detector's score threshold: rows labelled, columns detected, the last of each
    "background"), latency_ms, provider, n_test and per-image detections; ground-truth boxes of classes the detector
    does not know are left out, with an issue. `prompts`: an open-set detector searches for the classes of this
    prompts file (engine.class_prompts) instead of its trained ones."""
    detector = detector_for(info, device, prompts)
    data = load_detection_set(data_root, category=category)
    tests = data.select("test")
    if not tests:
        what = f"category '{category}'" if category else "the dataset"
        raise DatasetError(f"{data_root}: no labelled test images for {what} (test split is empty)")
    issues = [str(i) for i in data.issues]
    to_model = np.array([detector.classes.index(c) if c in detector.classes else -1 for c in data.classes], np.int64)
    unknown = [c for c in data.classes if c not in detector.classes]
    if unknown:
        issues.append(str(LoadIssue(data.root, f"classes {', '.join(unknown)} are not among the detector's classes "
                                               f"({', '.join(detector.classes)}); their boxes are left out")))
    if not (to_model >= 0).any():
        raise DatasetError(f"{data_root}: none of the dataset's classes ({', '.join(data.classes)}) is among the "
                           f"detector's ({', '.join(detector.classes)})")

    gt, pred, latencies, per_image = [], [], [], []
    for r in detect_images(detector, [s.image_path for s in tests], progress,
                           lambda d, t: f"evaluated {d}/{t}"):
        if not isinstance(r, Detected):
            issues.append(r.error)
            continue
        sample = tests[r.index]
        labels = to_model[sample.labels]
        known = labels >= 0
        gt.append((sample.boxes[known], labels[known]))
        pred.append((r.boxes, r.scores, r.classes))
        latencies.append(r.latency_ms)
        per_image.append({
            "path": str(sample.image_path),
            "n_truth": int(known.sum()),
            "boxes": np.round(r.boxes, 2).tolist(),
            "scores": np.round(r.scores, 5).tolist(),
            "classes": [detector.classes[int(c)] for c in r.classes],
        })
    if not gt:
        raise DatasetError(f"{data_root}: none of the {len(tests)} test images could be read")

    metrics = detection_metrics(gt, pred, detector.classes, curves=True)
    names = detector.classes
    threshold = detector.score_threshold
    matrix = confusion_matrix(
        ((boxes, [names[int(k)] for k in labels], p_boxes, p_scores, [names[int(k)] for k in p_classes])
         for (boxes, labels), (p_boxes, p_scores, p_classes) in zip(gt, pred, strict=True)),
        names, threshold)
    steady = latencies[1:] if len(latencies) > 1 else latencies  # the first run includes ORT's lazy start
    result = {
        **metrics,
        "confusion_matrix": {"classes": [*names, BACKGROUND], "threshold": threshold, "matrix": matrix.tolist()},
        "n_test": len(gt),
        "n_truth_boxes": int(sum(len(labels) for _, labels in gt)),
        "latency_ms": round(float(np.median(steady)), 3),
        "provider": detector.provider,
        "task": "detector",
        "model_kind": info.kind,
        "classes": list(detector.classes),
        "prompts": str(prompts) if prompts is not None else None,
        "score_threshold": detector.score_threshold,
        "notes": list(detector.notes),
        "category": category,
        "model": str(Path(info.folder).resolve()),
        "data": str(Path(data_root).resolve()),
        "issues": issues,
        "per_image": per_image,
    }
    result["summary"] = _summary(result)
    write_report(result, report_path)
    return result


def _summary(r: dict) -> str:
    f = fmt_metric
    per_class = "  ".join(f"{k} {f(v)}" for k, v in r["ap50_per_class"].items())
    return (f"mAP@0.5 {f(r['map50'])}  mAP@[.5:.95] {f(r['map50_95'])}  ({r['n_test']} test images, "
            f"{r['latency_ms']:.1f} ms/image on {r['provider']})\nAP@0.5 per class: {per_class}")
