"""COCO detection metrics (mAP@0.5, mAP@[.5:.95], AP@0.5 per class) computed by pycocotools, never by hand.

Boxes are x0, y0, x1, y1 in pixels (x1, y1 exclusive), as everywhere in DefectScope; they are handed to COCOeval as
x, y, w, h. COCOeval's own area ranges and 100-detections cap apply (the "all" area range is reported).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

GroundTruth = tuple[np.ndarray, np.ndarray]  # boxes [N, 4], labels [N]
Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [M, 4], scores [M], labels [M]


def detection_metrics(
    gt: Sequence[GroundTruth], pred: Sequence[Prediction], classes: Sequence[str], curves: bool = False
) -> dict:
    """{"map50", "map50_95", "ap50_per_class": {class: AP@0.5 or None when the class has no ground truth}} over
    images given in the same order in `gt` and `pred`; None for the means when there is no ground-truth box.

    `curves`: also "pr50_per_class" {class: {"recall": [...], "precision": [...]}}, COCOeval's interpolated
    precision at IoU 0.5 on its 101 recall points (classes without ground truth left out), for plotting.
    """
    if len(gt) != len(pred):
        raise ValueError(f"detection_metrics: {len(gt)} ground-truth images but {len(pred)} predictions")
    images, annotations, results = [], [], []
    for image_id, ((gt_boxes, gt_labels), (boxes, scores, labels)) in enumerate(zip(gt, pred, strict=True), 1):
        images.append({"id": image_id})
        for box, label in zip(_xywh(gt_boxes), np.asarray(gt_labels).reshape(-1), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for box, score, label in zip(_xywh(boxes), np.asarray(scores).reshape(-1),
                                     np.asarray(labels).reshape(-1), strict=True):
            results.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box, "score": float(score)})
    per_class: dict[str, float | None] = {name: None for name in classes}
    if not annotations:
        empty: dict = {"map50": None, "map50_95": None, "ap50_per_class": per_class}
        return {**empty, "pr50_per_class": {}} if curves else empty
    if not results:  # COCO.loadRes refuses an empty list; no detection at all is AP 0 for every present class
        present = {a["category_id"] - 1 for a in annotations}
        out = {"map50": 0.0, "map50_95": 0.0,
               "ap50_per_class": {n: (0.0 if i in present else None) for i, n in enumerate(classes)}}
        if curves:
            out["pr50_per_class"] = {n: {"recall": [0.0, 1.0], "precision": [0.0, 0.0]}
                                     for i, n in enumerate(classes) if i in present}
        return out

    quiet = io.StringIO()  # pycocotools prints its progress and summary table to stdout
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations,
                           "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]; -1 = no ground truth
    precision = ev.eval["precision"]
    iou50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    for k, name in enumerate(classes):
        p = precision[iou50, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    out = {"map50": _stat(ev.stats[1]), "map50_95": _stat(ev.stats[0]), "ap50_per_class": per_class}
    if curves:
        recall = [round(float(r), 4) for r in ev.params.recThrs]
        out["pr50_per_class"] = {
            name: {"recall": recall, "precision": [round(max(float(p), 0.0), 5) for p in precision[iou50, :, k, 0, -1]]}
            for k, name in enumerate(classes) if per_class[name] is not None
        }
    return out


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in b]


def _stat(value: float) -> float | None:
    return None if value < 0 else float(value)
