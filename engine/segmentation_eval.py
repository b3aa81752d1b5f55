"""Evaluate a defect segmentation model on held-out images: mIoU and IoU per defect class
(engine.metrics.segmentation), with the image- and pixel-level anomaly metrics of its defect probability map.

`segmentation_metrics` is the one loop: the trainer runs it on the graph it is about to publish (the "validation"
block of defect_segmentation.json) and `defectscope eval` on the published folder (`evaluate_segmentation`, the
segmentation half of engine.evaluate), so both report the same figures for the same images. Which images are held
out is engine.datasets.segmentation's rule: every masked defect of the model's classes and every good test image
the model did not train on (its metadata lists those).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.datasets.imageio import read_image, read_mask
from engine.datasets.registry import load_dataset
from engine.datasets.segmentation import SegSample, held_out_samples
from engine.datasets.types import DEFECTIVE
from engine.errors import DatasetError, DefectScopeError
from engine.jobs.registry import Progress
from engine.metrics.report import evaluate_anomaly
from engine.metrics.segmentation import confusion, iou_report
from engine.reports import fmt_metric, write_report
from engine.runtime.model_format import ModelInfo
from engine.synthesis.synthetic_set import check_not_synthetic

# image (H x W x 3 uint8) -> (labels H x W uint8, defect probability H x W float32), as the exported graph gives them
Segment = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def segmentation_metrics(segment: Segment, samples: Sequence[SegSample], classes: Sequence[str],
                         progress: Progress | None = None) -> dict[str, Any]:
    """mIoU, IoU per class, background IoU, image AUROC / pixel AUROC / AU-PRO of the defect probability, counts
    and latency over `samples`; unreadable images and masks are listed in "issues", not fatal."""
    report = progress or (lambda _f, _m: None)
    n_labels = len(classes) + 1
    matrix = np.zeros((n_labels, n_labels), np.int64)
    scores, is_defect, maps, masks, latencies, issues, per_image = [], [], [], [], [], [], []
    per_class_images = dict.fromkeys(classes, 0)
    for i, s in enumerate(samples):
        try:
            image = read_image(s.image_path)
            truth = read_mask(s.mask_path, shape=image.shape[:2]) if s.mask_path is not None else None
        except DefectScopeError as exc:
            issues.append(str(exc))
            continue
        t0 = time.perf_counter()
        labels, prob = segment(image)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        truth_labels = np.zeros(image.shape[:2], np.uint8) if truth is None else truth.astype(np.uint8) * s.label
        matrix += confusion(truth_labels, labels, n_labels)
        scores.append(float(prob.max()))
        is_defect.append(int(s.label > 0))
        maps.append(prob)
        masks.append(truth)
        if s.label:
            per_class_images[classes[s.label - 1]] += 1
        per_image.append({"path": str(s.image_path), "class": classes[s.label - 1] if s.label else "good",
                          "score": round(scores[-1], 6),
                          "predicted": sorted({classes[v - 1] for v in np.unique(labels).tolist() if v})})
        report((i + 1) / len(samples), f"evaluated {i + 1}/{len(samples)}")
    if not scores:
        raise DatasetError(f"none of the {len(samples)} held-out images could be read: "
                           + "; ".join(issues[:3]))
    try:
        anomaly = evaluate_anomaly(scores, is_defect, maps, masks)
    except ValueError as exc:  # e.g. no good held-out image: no image AUROC
        anomaly = {"image_auroc": None, "pixel_auroc": None, "aupro": None}
        issues.append(f"anomaly metrics: {exc}")
    steady = latencies[1:] if len(latencies) > 1 else latencies  # the first run includes ORT's lazy start
    return {
        **iou_report(matrix, classes),
        "image_auroc": anomaly["image_auroc"], "pixel_auroc": anomaly["pixel_auroc"], "aupro": anomaly["aupro"],
        "n_images": len(scores), "n_defective": int(sum(is_defect)), "n_good": len(scores) - int(sum(is_defect)),
        "n_images_per_class": per_class_images,
        "confusion_matrix": {"labels": ["background", *classes], "pixels": matrix.tolist()},
        "latency_ms": round(float(np.median(steady)), 3),
        "issues": issues, "per_image": per_image,
    }


def evaluate_segmentation(
    info: ModelInfo,
    data_root: str | Path,
    category: str | None = None,
    report_path: str | Path | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    prompts: str | Path | None = None,
) -> dict:
    """The model on the dataset's held-out images (those its metadata does not list as trained on)."""
    from engine.runtime.defect_segmentation import DefectSegmenter

    if prompts is not None:
        raise DefectScopeError(f"prompts {prompts}: only an open-set detector takes prompts; {info.folder} is a "
                               f"{info.kind} model")
    check_not_synthetic(data_root, "evaluation data")
    segmenter = DefectSegmenter(info, device)
    dataset = load_dataset(data_root, category=category)
    training = info.metadata.get("training") or {}
    trained = training.get("trained_on") or []
    samples = held_out_samples(dataset.samples, dataset.root, segmenter.classes, trained)
    if not samples:
        what = f"category '{category}'" if category else "the dataset"
        raise DatasetError(f"{data_root}: no held-out images for {what} (no masked defects of "
                           f"{', '.join(segmenter.classes)} or good test images that the model did not train on)")
    notes = list(segmenter.notes)
    other = sorted({s.defect_type for s in dataset.samples if s.label == DEFECTIVE and s.mask_path is not None
                    and s.defect_type not in segmenter.classes})
    if other:
        notes.append(f"defect types the model does not know are left out: {', '.join(other)}")
    trained_root = info.metadata.get("dataset_root")
    if trained and trained_root and Path(trained_root).resolve() != dataset.root.resolve():
        notes.append(f"the model was trained on {trained_root}: images with the same relative paths here are "
                     "treated as trained on")

    def segment(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = segmenter.segment(image)
        return out.labels, out.defect_probability

    metrics = segmentation_metrics(segment, samples, segmenter.classes, progress)
    result = {
        **metrics,
        "n_test": metrics["n_images"],
        "provider": segmenter.provider,
        "task": info.task,
        "model_kind": info.kind,
        "classes": list(segmenter.classes),
        "score_threshold": segmenter.threshold,
        "notes": notes,
        "category": category,
        "model": str(Path(info.folder).resolve()),
        "data": str(Path(data_root).resolve()),
    }
    result["summary"] = summary(result)
    write_report(result, report_path)
    return result


def summary(r: dict) -> str:
    f = fmt_metric
    per_class = "  ".join(f"{k} {f(v)}" for k, v in r["iou_per_class"].items())
    return (f"mIoU {f(r['miou'])}  background IoU {f(r['background_iou'])}  image AUROC {f(r['image_auroc'])}  "
            f"pixel AUROC {f(r['pixel_auroc'])}  ({r['n_images']} held-out images: {r['n_defective']} defective, "
            f"{r['n_good']} good; {r['latency_ms']:.1f} ms/image on {r.get('provider', 'CPU')})\n"
            f"IoU per class: {per_class}")
