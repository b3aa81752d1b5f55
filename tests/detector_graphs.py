"""Detector folders the tests build themselves with the onnx helper API (no torch, no trained weights), so the
runtime, evaluation and inference are tested without the trainer.

- `write_constant_detector`: a DefectScope detector (detector_format's graph interface) that reports given boxes
  whatever the image, through ONNX NonMaxSuppression as a trained one does.
- `write_blob_detector`: a DefectScope detector that really looks at the image: it resizes it to its input size on
  the long side (as a trained one does), keeps bright blobs at least 5 px wide there and reports a box per 8-px cell
  that holds one, NMS in the graph. A 20-px spot on a huge image vanishes in the resize, so only tiling finds it.
- `write_yolo_detector`: the same blob logic on a fixed NCHW float input with a YOLO-style [1, N, 4 + 1 + C] output
  (or YOLOv8-style [1, 4 + C, N]), plus its external_detector.json: a detector brought from elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.runtime import detector_format as fmt

OPSET = [helper.make_operatorsetid("", 18)]
CELL = 8
HALF_BOX = 16  # cell boxes are 32 px wide so neighbouring cells overlap and NMS keeps one per blob


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _save(nodes: list, inits: list, inputs: list, outputs: list, path: Path) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _e1_io() -> tuple[list, list]:
    inputs = [helper.make_tensor_value_info(fmt.INPUT_NAME, TensorProto.UINT8, ["H", "W", 3])]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
               helper.make_tensor_value_info("classes", TensorProto.INT64, ["N"])]
    return inputs, outputs


def _write_metadata(folder: Path, classes: list[str], input_size: int, **extra: object) -> None:
    meta = {"format": fmt.FORMAT, "classes": classes, "input_size": input_size, "min_score": fmt.DEFAULT_MIN_SCORE,
            "nms_iou": fmt.DEFAULT_NMS_IOU, "max_detections": fmt.DEFAULT_MAX_DETECTIONS, "score_threshold": 0.5,
            "source": "defectscope", **extra}
    (folder / fmt.METADATA_FILE).write_text(json.dumps(meta))


def _nms_gather(boxes: str, scores: str, iou: float, score_min: float, classes: str | None) -> tuple[list, list]:
    """boxes [1, M, 4] (NMS coordinates), scores [1, 1, M] -> the E1 outputs via ONNX NonMaxSuppression."""
    nodes = [
        helper.make_node("NonMaxSuppression", [boxes, scores, "n_max", "n_iou", "n_min"], ["n_sel"]),
        helper.make_node("Gather", ["n_sel", "n_two"], ["n_idx"], axis=1),
        helper.make_node("Reshape", [scores, "n_flat"], ["n_scores_flat"]),
        helper.make_node("Gather", ["n_scores_flat", "n_idx"], ["scores"], axis=0),
        helper.make_node("Reshape", ["n_boxes_orig", "n_flat4"], ["n_boxes_flat"]),
        helper.make_node("Gather", ["n_boxes_flat", "n_idx"], ["boxes"], axis=0),
    ]
    if classes is None:
        nodes.append(helper.make_node("Mul", ["n_idx", "n_zero_i"], ["classes"]))
    else:
        nodes.append(helper.make_node("Gather", [classes, "n_idx"], ["classes"], axis=0))
    inits = [_const("n_max", np.array([fmt.DEFAULT_MAX_DETECTIONS], np.int64)),
             _const("n_iou", np.array([iou], np.float32)), _const("n_min", np.array([score_min], np.float32)),
             _const("n_two", np.array(2, np.int64)), _const("n_flat", np.array([-1], np.int64)),
             _const("n_flat4", np.array([-1, 4], np.int64)), _const("n_zero_i", np.array(0, np.int64))]
    return nodes, inits


def write_constant_detector(
    folder: Path, boxes: list[list[float]], scores: list[float], classes: list[int], class_names: list[str],
    input_size: int = 256,
) -> Path:
    """A detector folder whose graph reports `boxes` (original pixels) with `scores` and `classes` for any image."""
    folder.mkdir(parents=True, exist_ok=True)
    b = np.asarray(boxes, np.float32).reshape(1, -1, 4)
    nodes = [
        # the image feeds the graph (0 x its smallest pixel), so the input is really consumed
        helper.make_node("ReduceMin", [fmt.INPUT_NAME], ["c_min"], keepdims=0),
        helper.make_node("Cast", ["c_min"], ["c_min_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["c_min_f", "c_zero"], ["c_nil"]),
        helper.make_node("Add", ["c_boxes", "c_nil"], ["n_boxes_orig"]),
    ]
    nms, nms_inits = _nms_gather("n_boxes_orig", "c_scores", 0.5, fmt.DEFAULT_MIN_SCORE, "c_classes")
    inits = [_const("c_zero", np.array(0.0, np.float32)), _const("c_boxes", b),
             _const("c_scores", np.asarray(scores, np.float32).reshape(1, 1, -1)),
             _const("c_classes", np.asarray(classes, np.int64)), *nms_inits]
    inputs, outputs = _e1_io()
    _save(nodes + nms, inits, inputs, outputs, folder / fmt.MODEL_FILE)
    _write_metadata(folder, class_names, input_size)
    return folder


def _blob_cells(src: str, size: int, threshold: float, prefix: str) -> tuple[list, list, str]:
    """src [1, 1, size, size] float -> [1, 1, G*G] cell scores (1 where an eroded bright blob lies in the cell)."""
    g = size // CELL
    nodes = [
        helper.make_node("Greater", [src, f"{prefix}_thr"], [f"{prefix}_bright_b"]),
        helper.make_node("Cast", [f"{prefix}_bright_b"], [f"{prefix}_bright"], to=TensorProto.FLOAT),
        # erosion = -maxpool(-x): only blobs at least 5 px wide survive
        helper.make_node("Neg", [f"{prefix}_bright"], [f"{prefix}_neg"]),
        helper.make_node("MaxPool", [f"{prefix}_neg"], [f"{prefix}_neg_pool"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Neg", [f"{prefix}_neg_pool"], [f"{prefix}_eroded"]),
        helper.make_node("MaxPool", [f"{prefix}_eroded"], [f"{prefix}_cells"], kernel_shape=[CELL, CELL],
                         strides=[CELL, CELL]),
        helper.make_node("Reshape", [f"{prefix}_cells", f"{prefix}_shape"], [f"{prefix}_flat"]),
    ]
    inits = [_const(f"{prefix}_thr", np.array(threshold, np.float32)),
             _const(f"{prefix}_shape", np.array([1, 1, g * g], np.int64))]
    return nodes, inits, f"{prefix}_flat"


def cell_boxes(size: int) -> np.ndarray:
    """[G*G, 4] x0, y0, x1, y1 of the 32-px box centred on each 8-px cell, row-major."""
    g = size // CELL
    cy, cx = np.meshgrid(np.arange(g) * CELL + CELL / 2, np.arange(g) * CELL + CELL / 2, indexing="ij")
    c = np.stack([cx.ravel(), cy.ravel()], axis=1)
    return np.concatenate([c - HALF_BOX, c + HALF_BOX], axis=1).astype(np.float32)


def write_blob_detector(folder: Path, input_size: int = 256, class_names: list[str] | None = None,
                        score: float = 0.9) -> Path:
    """A detector of bright blobs (>= 5 px after resizing the long side to `input_size`), E1 interface."""
    folder.mkdir(parents=True, exist_ok=True)
    s = input_size
    nodes = [
        helper.make_node("Cast", [fmt.INPUT_NAME], ["p_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["p_f", "p_axis2"], ["p_gray"], keepdims=1),  # [H, W, 1]
        helper.make_node("Transpose", ["p_gray"], ["p_chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["p_chw", "p_axis0"], ["p_nchw"]),
        helper.make_node("Shape", [fmt.INPUT_NAME], ["p_hw_i"], start=0, end=2),
        helper.make_node("Cast", ["p_hw_i"], ["p_hw"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["p_hw"], ["p_long"], keepdims=1),
        helper.make_node("Div", ["p_s", "p_long"], ["p_scale"]),
        helper.make_node("Mul", ["p_hw", "p_scale"], ["p_hw_scaled"]),
        helper.make_node("Add", ["p_hw_scaled", "p_half"], ["p_hw_half"]),
        helper.make_node("Floor", ["p_hw_half"], ["p_hw_new_f"]),
        helper.make_node("Cast", ["p_hw_new_f"], ["p_hw_new"], to=TensorProto.INT64),
        helper.make_node("Resize", ["p_nchw", "", "", "p_hw_new"], ["p_resized"], mode="linear", antialias=1,
                         axes=[2, 3]),
        helper.make_node("Sub", ["p_s_i", "p_hw_new"], ["p_pad_hw"]),
        helper.make_node("Concat", ["p_zeros6", "p_pad_hw"], ["p_pads"], axis=0),
        helper.make_node("Pad", ["p_resized", "p_pads"], ["p_padded"], mode="constant"),
    ]
    inits = [_const("p_axis2", np.array([2], np.int64)), _const("p_axis0", np.array([0], np.int64)),
             _const("p_s", np.array([float(s)], np.float32)), _const("p_half", np.array([0.5], np.float32)),
             _const("p_s_i", np.array([s, s], np.int64)), _const("p_zeros6", np.zeros(6, np.int64))]
    cells, cell_inits, flat = _blob_cells("p_padded", s, 128.0, "b")
    nodes += [
        *cells,
        helper.make_node("Mul", [flat, "b_score"], ["b_scores"]),
        # boxes in model pixels -> original pixels: divide by the resize scale
        helper.make_node("Div", ["b_boxes", "p_scale"], ["n_boxes_orig"]),
    ]
    inits += [*cell_inits, _const("b_score", np.array(score, np.float32)),
              _const("b_boxes", cell_boxes(s).reshape(1, -1, 4))]
    nms, nms_inits = _nms_gather("b_boxes", "b_scores", 0.1, 0.5, None)
    inputs, outputs = _e1_io()
    _save(nodes + nms, inits + nms_inits, inputs, outputs, folder / fmt.MODEL_FILE)
    _write_metadata(folder, class_names or ["spot"], input_size)
    return folder


def write_yolo_detector(folder: Path, size: int = 320, class_probs: tuple[float, ...] = (0.1, 0.9),
                        class_names: list[str] | None = None, transposed: bool = False,
                        description: dict | None = None) -> Path:
    """A YOLO-style export (input "images" float [1, 3, size, size] in 0..1; output "output0" [1, N, 4 + 1 + C],
    or [1, 4 + C, N] without objectness when `transposed`) plus its external_detector.json."""
    folder.mkdir(parents=True, exist_ok=True)
    g2 = (size // CELL) ** 2
    n_cls = len(class_probs)
    nodes = [helper.make_node("ReduceMax", ["images", "y_axis1"], ["y_gray"], keepdims=1)]
    cells, cell_inits, flat = _blob_cells("y_gray", size, 0.5, "y")
    boxes = cell_boxes(size)
    cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)
    nodes += [
        *cells,
        helper.make_node("Reshape", [flat, "y_col"], ["y_obj"]),  # [N, 1]
        helper.make_node("Mul", ["y_obj", "y_probs"], ["y_cls"]),  # [N, C]: class scores only where a blob is
    ]
    inits = [*cell_inits, _const("y_axis1", np.array([1], np.int64)), _const("y_col", np.array([-1, 1], np.int64)),
             _const("y_box", cxcywh.astype(np.float32)),
             _const("y_probs", np.asarray(class_probs, np.float32).reshape(1, -1))]
    parts = ["y_box", "y_cls"] if transposed else ["y_box", "y_obj", "y_cls"]
    nodes.append(helper.make_node("Concat", parts, ["y_rows"], axis=1))
    if transposed:
        nodes.append(helper.make_node("Transpose", ["y_rows"], ["y_rows_t"], perm=[1, 0]))
        nodes.append(helper.make_node("Unsqueeze", ["y_rows_t", "y_axis0"], ["output0"]))
        out_shape = [1, 4 + n_cls, g2]
    else:
        nodes.append(helper.make_node("Unsqueeze", ["y_rows", "y_axis0"], ["output0"]))
        out_shape = [1, g2, 5 + n_cls]
    inits.append(_const("y_axis0", np.array([0], np.int64)))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)]
    _save(nodes, inits, inputs, outputs, folder / "yolo.onnx")
    desc = description or {
        "model": "yolo.onnx",
        "classes": class_names or [f"class{i}" for i in range(n_cls)],
        "input": {"size": [size, size], "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                  "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "letterbox", "pad_value": 0},
        "output": {"layout": "yolo", "objectness": not transposed, "transposed": transposed,
                   "box_format": "cxcywh", "normalised": False},
        "min_score": 0.25, "nms_iou": 0.1, "max_detections": 100, "score_threshold": 0.5,
    }
    (folder / fmt.EXTERNAL_DESCRIPTION_FILE).write_text(json.dumps(desc))
    return folder


def write_boxes_scores_classes_detector(folder: Path, size: tuple[int, int] = (240, 320),
                                        boxes: list[list[float]] | None = None) -> Path:
    """An external detector with an NHWC uint8 BGR input of `size` (H, W), stretched (not letterboxed), whose
    graph already ran its own NMS: outputs "det_boxes" (x0, y0, x1, y1 in 0..1), "det_scores", "det_labels"."""
    folder.mkdir(parents=True, exist_ok=True)
    b = np.asarray(boxes or [[0.25, 0.25, 0.5, 0.5], [0.0, 0.5, 0.1, 0.6]], np.float32)
    h, w = size
    nodes = [
        helper.make_node("ReduceMin", ["input"], ["e_min"], keepdims=0),
        helper.make_node("Cast", ["e_min"], ["e_min_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["e_min_f", "e_zero"], ["e_nil"]),
        helper.make_node("Add", ["e_boxes", "e_nil"], ["det_boxes"]),
        helper.make_node("Identity", ["e_scores"], ["det_scores"]),
        helper.make_node("Identity", ["e_labels"], ["det_labels"]),
    ]
    inits = [_const("e_zero", np.array(0.0, np.float32)), _const("e_boxes", b[None]),
             _const("e_scores", np.linspace(0.9, 0.6, len(b)).astype(np.float32)[None]),
             _const("e_labels", (np.arange(len(b)) % 2).astype(np.int64)[None])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.UINT8, [1, h, w, 3])]
    outputs = [helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [1, len(b), 4]),
               helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [1, len(b)]),
               helper.make_tensor_value_info("det_labels", TensorProto.INT64, [1, len(b)])]
    _save(nodes, inits, inputs, outputs, folder / "other.onnx")
    desc = {"model": "other.onnx", "classes": ["a", "b"],
            "input": {"size": [h, w], "layout": "NHWC", "dtype": "uint8", "channels": "BGR", "resize": "stretch"},
            "output": {"layout": "boxes_scores_classes", "boxes": "det_boxes", "scores": "det_scores",
                       "classes": "det_labels", "box_format": "xyxy", "normalised": True},
            "min_score": 0.05, "nms_iou": 0.5, "score_threshold": 0.5}
    (folder / fmt.EXTERNAL_DESCRIPTION_FILE).write_text(json.dumps(desc))
    return folder
