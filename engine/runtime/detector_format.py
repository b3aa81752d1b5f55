"""The box-detector model format: DefectScope's own detectors and ones brought from elsewhere.

A detector folder holds two files, so one torch-free runtime (engine.runtime.detector) serves every detector:

detector.onnx
    input   "image"    uint8 [H, W, 3] RGB, any size
    outputs "boxes"    float32 [N, 4]  x0, y0, x1, y1 in pixels of the ORIGINAL image (x1, y1 exclusive)
            "scores"   float32 [N]     confidence 0..1, sorted descending
            "classes"  int64 [N]       index into detector.json "classes"
    Pre-processing (resize to `input_size` on the long side, normalisation) and non-maximum suppression (ONNX
    NonMaxSuppression, per class) are inside the graph; N <= `max_detections`, boxes below `min_score` dropped.

detector.json
    {"format": FORMAT, "classes": [str, ...], "input_size": int, "min_score": float, "nms_iou": float,
     "max_detections": int, "score_threshold": float (the default display/decision threshold),
     "source": "defectscope" | "external", "parity": {...} (own detectors), "training": {...}, ...}

Detectors exported elsewhere (e.g. a YOLO-style export with its own output layout) are registered by a small
description file, EXTERNAL_DESCRIPTION_FILE, that names their ONNX file, input size and layout, output names and
class list; the runtime adapts them to the outputs above (see engine.runtime.detector).
"""

from __future__ import annotations

FORMAT = "defectscope-detector/1"
MODEL_FILE = "detector.onnx"
METADATA_FILE = "detector.json"
EXTERNAL_DESCRIPTION_FILE = "external_detector.json"
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "classes")
DEFAULT_MIN_SCORE = 0.05
DEFAULT_NMS_IOU = 0.5
DEFAULT_MAX_DETECTIONS = 100
