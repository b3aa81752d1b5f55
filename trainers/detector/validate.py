"""The exported detector on the validation images: COCO mAP (engine.metrics.detection, pycocotools) and the score
threshold the workbench and `infer` start from, chosen where F1 of boxes at IoU 0.5 peaks (a hit needs the right
class; engine.metrics.detection_match's rule). Runs the ONNX graph about to be published, so the figures are those
of the model users get, not of the torch twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.metrics.detection import detection_metrics
from engine.metrics.detection_match import match_image
from engine.runtime import detector_format as fmt
from trainers.common.onnx_export import cpu_session

DEFAULT_THRESHOLD = 0.3  # without validation images (or boxes) to choose from
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.025), 3)


def validate(model: bytes, classes: Sequence[str], samples: Sequence[Any],
             extra_feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """{"n_images", "map50", "map50_95", "ap50_per_class", "score_threshold", "f1", "precision", "recall"} on
    `samples` (engine.datasets.detection.DetectionSample); None figures and DEFAULT_THRESHOLD without boxes.
    `extra_feeds`: the graph's other inputs (an open-set detector's queries)."""
    session = cpu_session(model)
    gt, pred = [], []
    for s in samples:
        try:
            image = read_image(s.image_path)
        except DefectScopeError:
            continue
        boxes, scores, labels = session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: image, **(extra_feeds or {})})
        gt.append((s.boxes.astype(np.float32), s.labels.astype(np.int64)))
        pred.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1),
                     np.asarray(labels, np.int64).reshape(-1)))
    n_truth = sum(len(t[1]) for t in gt)
    out: dict[str, Any] = {"n_images": len(gt), "n_boxes": n_truth, "score_threshold": DEFAULT_THRESHOLD,
                           "f1": None, "precision": None, "recall": None}
    if not gt or not n_truth:
        return {**out, "map50": None, "map50_95": None, "ap50_per_class": {c: None for c in classes}}
    out.update(detection_metrics(gt, pred, list(classes)))
    best = (-1.0, DEFAULT_THRESHOLD, 0.0, 0.0)
    for t in THRESHOLDS:
        hits = alarms = 0
        for (tb, tl), (pb, ps, pl) in zip(gt, pred, strict=True):
            m = match_image(tb, [classes[i] for i in tl], pb, ps, [classes[i] for i in pl], float(t))
            hits += m.n_hits
            alarms += m.n_false_alarms
        precision = hits / max(hits + alarms, 1)
        recall = hits / n_truth
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        if f1 > best[0]:
            best = (f1, float(t), precision, recall)
    out.update(f1=round(best[0], 4), score_threshold=best[1], precision=round(best[2], 4), recall=round(best[3], 4))
    return out
