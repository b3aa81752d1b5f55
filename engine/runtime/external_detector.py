"""Detectors exported elsewhere (a YOLO-style export, another tool's boxes/scores/classes graph), adapted to the
outputs of DefectScope's own: boxes in original pixels, scores, class indices.

The folder holds the ONNX file and `external_detector.json` (detector_format.EXTERNAL_DESCRIPTION_FILE):

    {"model": "yolo.onnx", "classes": ["scratch", "dent"],
     "input":  {"size": [640, 640] (H, W; or one int), "layout": "NCHW" | "NHWC", "dtype": "float32" | "uint8",
                "channels": "RGB" | "BGR", "scale": 0.00392156862745098, "mean": [0, 0, 0], "std": [1, 1, 1],
                "resize": "letterbox" | "stretch", "pad_value": 114, "name": (optional, default: the only input)},
     "output": {"layout": "yolo", "objectness": true, "transposed": false, "box_format": "cxcywh",
                "normalised": false, "name": (optional)}
            or {"layout": "boxes_scores_classes", "boxes": "boxes", "scores": "scores", "classes": "classes",
                "box_format": "xyxy", "normalised": false},
     "min_score": 0.25, "nms_iou": 0.45, "max_detections": 100, "score_threshold": 0.5}

"yolo": one tensor [1, N, 4 (+1 objectness) + C] (YOLOv5-style), or [1, 4 + C, N] with "transposed": true and
"objectness": false (YOLOv8-style); score = objectness x class probability of the best class. Boxes are in pixels of
the network input (or 0..1 with "normalised") and are mapped back through the letterbox or stretch. The runtime
applies min_score and class-aware NMS itself, so graphs with or without their own NMS both work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.errors import ModelError
from engine.runtime import detector_format as fmt
from engine.runtime.detector import PASS_THREADS
from engine.runtime.model_format import ModelInfo
from engine.runtime.session import create_session
from engine.runtime.tiling import merge_detections

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]


class _Description:
    """The description file's fields, each checked with the file and field named."""

    def __init__(self, meta: dict, path: Path) -> None:
        self.path = path
        self.meta = meta

    def section(self, key: str) -> dict:
        value = self.meta.get(key)
        if not isinstance(value, dict):
            raise ModelError(f"{self.path}: {key} must be an object")
        return value

    def choice(self, sec: dict, where: str, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = sec.get(key, default)
        if value not in options:
            raise ModelError(f"{self.path}: {where}.{key} must be one of {', '.join(options)} (got {value!r})")
        return str(value)

    def floats(self, sec: dict, where: str, key: str, default: list[float], n: int | None = None) -> np.ndarray:
        value = sec.get(key, default)
        try:
            arr = np.asarray(value, np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise ModelError(f"{self.path}: {where}.{key} must be a number or a list of numbers") from None
        if n is not None and arr.size not in (1, n):
            raise ModelError(f"{self.path}: {where}.{key} must have 1 or {n} values (got {arr.size})")
        return arr


class ExternalGraph:
    """One ONNX detector from elsewhere behind the common outputs (see the module docstring for its description)."""

    def __init__(self, info: ModelInfo, settings: Any, device: str) -> None:
        path = info.folder / fmt.EXTERNAL_DESCRIPTION_FILE
        d = _Description(info.metadata, path)
        model_name = info.metadata.get("model")
        if not isinstance(model_name, str) or not model_name or Path(model_name).is_absolute() or ".." in model_name:
            raise ModelError(f"{path}: model must name the ONNX file inside the folder (got {model_name!r})")
        onnx_path = info.folder / model_name
        if not onnx_path.is_file():
            raise ModelError(f"{path}: model: {onnx_path.name} not found in {info.folder}")
        self.settings = settings
        self.n_classes = len(settings.classes)

        inp = d.section("input")
        size = inp.get("size")
        hw = [size, size] if isinstance(size, int) else size
        if not isinstance(hw, list) or len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
            raise ModelError(f"{path}: input.size must be a positive int or [height, width] (got {size!r})")
        self.in_h, self.in_w = hw
        self.layout = d.choice(inp, "input", "layout", ("NCHW", "NHWC"), "NCHW")
        self.dtype = np.float32 if d.choice(inp, "input", "dtype", ("float32", "uint8"), "float32") == "float32" \
            else np.uint8
        self.bgr = d.choice(inp, "input", "channels", ("RGB", "BGR"), "RGB") == "BGR"
        self.letterbox = d.choice(inp, "input", "resize", ("letterbox", "stretch"), "letterbox") == "letterbox"
        self.scale = float(d.floats(inp, "input", "scale", [1.0 / 255.0], 1)[0])
        self.mean = d.floats(inp, "input", "mean", [0.0], 3)
        self.std = d.floats(inp, "input", "std", [1.0], 3)
        if np.any(self.std == 0):
            raise ModelError(f"{path}: input.std must not be 0")
        self.pad_value = float(d.floats(inp, "input", "pad_value", [114.0], 1)[0])

        out = d.section("output")
        self.out = out
        self.out_layout = d.choice(out, "output", "layout", ("yolo", "boxes_scores_classes"))
        self.cxcywh = d.choice(out, "output", "box_format", ("cxcywh", "xyxy"),
                               "cxcywh" if self.out_layout == "yolo" else "xyxy") == "cxcywh"
        self.normalised = bool(out.get("normalised", False))
        self.objectness = bool(out.get("objectness", True))
        self.transposed = bool(out.get("transposed", False))

        try:
            self.session, self.provider = create_session(onnx_path, device, threads=PASS_THREADS)
        except Exception as exc:
            raise ModelError(f"{onnx_path}: ONNX Runtime cannot load the detector ({exc})") from None
        names = [i.name for i in self.session.get_inputs()]
        self.input_name = inp.get("name") or (names[0] if len(names) == 1 else None)
        if self.input_name not in names:
            raise ModelError(f"{path}: input.name must be one of the graph's inputs {names} "
                             f"(got {inp.get('name')!r})")
        outputs = [o.name for o in self.session.get_outputs()]
        if self.out_layout == "yolo":
            wanted = [out.get("name") or outputs[0]]
        else:
            wanted = [out.get(k, k) for k in ("boxes", "scores", "classes")]
        missing = [w for w in wanted if w not in outputs]
        if missing:
            raise ModelError(f"{path}: output names {missing} are not outputs of the graph {outputs}")
        self.output_names = wanted
        self.decode: Callable[[list[np.ndarray]], Detections] = (
            self._decode_yolo if self.out_layout == "yolo" else self._decode_bsc)

    # ------------------------------------------------------------------------------------------ pre-processing
    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
        """The network input and the map back: original = (input - pad) / scale, per axis."""
        h, w = image.shape[:2]
        if self.letterbox:
            s = min(self.in_w / w, self.in_h / h)
            sx = sy = s
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
        else:
            sx, sy = self.in_w / w, self.in_h / h
            nw, nh = self.in_w, self.in_h
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
        canvas = np.full((self.in_h, self.in_w, 3), self.pad_value, np.float32)
        px, py = (self.in_w - nw) // 2, (self.in_h - nh) // 2
        canvas[py:py + nh, px:px + nw] = resized
        if self.bgr:
            canvas = canvas[:, :, ::-1]
        if self.dtype == np.float32:
            canvas = (canvas * self.scale - self.mean) / self.std
        tensor = canvas.astype(self.dtype)
        tensor = tensor.transpose(2, 0, 1)[None] if self.layout == "NCHW" else tensor[None]
        return np.ascontiguousarray(tensor), sx, sy, float(px), float(py)

    def run(self, image: np.ndarray) -> Detections:
        tensor, sx, sy, px, py = self._prepare(image)
        raw = self.session.run(self.output_names, {self.input_name: tensor})
        boxes, scores, classes = self.decode(raw)
        if self.normalised:
            boxes = boxes * np.array([self.in_w, self.in_h, self.in_w, self.in_h], np.float32)
        if self.cxcywh:
            cx, cy, bw, bh = boxes.T
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        boxes = (boxes - np.array([px, py, px, py], np.float32)) / np.array([sx, sy, sx, sy], np.float32)
        keep = scores >= self.settings.min_score
        return merge_detections(boxes[keep].astype(np.float32), scores[keep], classes[keep],
                                self.settings.nms_iou, self.settings.max_detections)

    # ------------------------------------------------------------------------------------------ output layouts
    def _decode_yolo(self, raw: list[np.ndarray]) -> Detections:
        pred = np.asarray(raw[0], np.float32)
        pred = pred[0] if pred.ndim == 3 else pred
        if self.transposed:
            pred = pred.T
        extra = 5 if self.objectness else 4
        if pred.ndim != 2 or pred.shape[1] != extra + self.n_classes:
            raise ModelError(f"{self.out.get('name') or 'output'}: YOLO-style output of shape {pred.shape} does not "
                             f"match {extra} + {self.n_classes} classes (check output.objectness/transposed)")
        cls_scores = pred[:, extra:] if self.n_classes else np.ones((len(pred), 1), np.float32)
        classes = cls_scores.argmax(axis=1).astype(np.int64)
        scores = cls_scores[np.arange(len(pred)), classes]
        if self.objectness:
            scores = scores * pred[:, 4]
        return pred[:, :4].copy(), scores.astype(np.float32), classes

    def _decode_bsc(self, raw: list[np.ndarray]) -> Detections:
        boxes, scores, classes = (np.asarray(r) for r in raw)
        return (boxes.astype(np.float32).reshape(-1, 4), scores.astype(np.float32).reshape(-1),
                classes.astype(np.int64).reshape(-1))
