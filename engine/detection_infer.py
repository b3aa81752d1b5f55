"""Detector inference for the CLI: `detections.json` in the one detections schema (engine.detections; keys are the
output names, each item with its drawn picture's file name in "drawn") and one `<name>_boxes.png` per image with
the boxes at or above the threshold drawn: the detector half of `defectscope infer`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.detecting import Detected, detect_images
from engine.detections import DETECTIONS_FILE, DetectionItem, write_detections
from engine.infer import collect_images, unique_name
from engine.runtime.box_drawing import draw_detections
from engine.runtime.model_format import ModelInfo
from engine.runtime.open_detector import detector_for
from engine.scoring import NG, verdict


def infer_detector(info: ModelInfo, inputs: list[str | Path], out_dir: str | Path, device: str = "auto",
                   prompts: str | Path | None = None) -> dict:
    """Detect in loose image files into OUT. Returns the summary `defectscope infer` prints: provider, threshold,
    notes, `results` (per image: path, boxes, scores, classes, verdict = NG when a box reaches the threshold,
    drawn), `errors`, `n_ng` and a one-line `summary`. `prompts`: an open-set detector searches for the classes
    of this prompts file (engine.class_prompts)."""
    detector = detector_for(info, device, prompts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    files = [(path, unique_name(stem, used)) for path, stem in collect_images(inputs)]
    threshold = detector.score_threshold
    results, errors = [], []
    items: dict[str, DetectionItem] = {}
    failed: dict[str, str] = {}
    for r in detect_images(detector, [p for p, _ in files]):
        name = files[r.index][1]
        if not isinstance(r, Detected):
            failed[name] = r.error
            errors.append({"path": str(r.path), "error": r.error.removeprefix(f"{r.path}: ")})
            continue
        drawn = f"{name}_boxes.png"
        picture = draw_detections(r.image, r.boxes, r.scores, r.classes, detector.classes, threshold)
        cv2.imwrite(str(out / drawn), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        classes = [detector.classes[int(c)] for c in r.classes]
        items[name] = DetectionItem(path=str(r.path), boxes=r.boxes, scores=r.scores, classes=classes,
                                    latency_ms=r.latency_ms, extra={"drawn": drawn})
        top = float(r.scores.max()) if len(r.scores) else 0.0
        results.append({
            "path": str(r.path), "name": name,
            "boxes": np.round(r.boxes, 2).tolist(), "scores": np.round(r.scores, 5).tolist(), "classes": classes,
            "score": round(top, 6), "verdict": verdict(top, threshold), "drawn": drawn,
            "latency_ms": round(r.latency_ms, 3),
        })
    path = write_detections(out, model=info.folder, classes=detector.classes, threshold=threshold,
                            provider=detector.provider, items=items, errors=failed, notes=detector.notes)
    n_ng = sum(r["verdict"] == NG for r in results)
    return {
        "model": str(Path(info.folder).resolve()), "task": "detector", "classes": list(detector.classes),
        "detections": str(path), "provider": detector.provider, "threshold": threshold,
        "notes": list(detector.notes), "results": results, "errors": errors, "n_ng": n_ng,
        "summary": (f"{len(results)} images searched on {detector.provider}: {n_ng} with a box at or above "
                    f"{threshold:g}, {sum(len(r['scores']) for r in results)} boxes in all; "
                    f"{DETECTIONS_FILE} and drawn boxes in {out}"),
    }
