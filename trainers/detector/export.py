"""Export to the detector format (engine.runtime.detector_format): detector.onnx + detector.json.

detector.onnx = the longest-side pre-processing shared with the promptable segmenter's encoder (resize, normalise,
pad: trainers.common.onnx_export) -> DetectorCore (boxes in model pixels, per-class scores) -> boxes scaled back to the
original image and clipped -> ONNX NonMaxSuppression per class -> top `max_detections` by score.

Before anything is written, `check_parity` runs the torch model on raw uint8 images (its own resize,
trainers.detector.frame) and ONNX Runtime on the same raw images, and refuses to publish when the detections
differ.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from engine.errors import DefectScopeError
from engine.runtime import detector_format as fmt
from trainers.common.io import atomic_write
from trainers.common.onnx_export import cpu_session, preprocess_nodes, rewired_nodes, trace_to_onnx
from trainers.common.onnx_graph import IR_VERSION, OPSET
from trainers.detector.frame import frame_scale, to_frame
from trainers.detector.model import Detector, DetectorCore
from trainers.detector.validate import validate

STATE_FILE = "detector_state.pt"  # the trainable weights and the architecture: fine-tuning from this run (--init)
CORE_BOXES, CORE_SCORES = "core_boxes", "core_scores"
# Two float32 graphs of the same ops in another order: scores differ by ~1e-6, boxes by ~1e-4 px. Past these
# a side computes something else (another resize, another decode).
PARITY_SCORE_TOL = 1e-3
PARITY_IOU_MIN = 0.99
PARITY_BOX_TOL_PX = 0.05
PARITY_MARGIN = 0.02  # detections this close to a cut (min_score, the last places) may fall either side: skipped


class ParityError(DefectScopeError):
    """The ONNX graph's detections differ from the torch model's on the same raw image."""


def postprocess_nodes(image_size: int, min_score: float, nms_iou: float, max_det: int
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """CORE_BOXES [1, L, 4], CORE_SCORES [1, C, L] -> boxes [N, 4] (original pixels), scores [N], classes [N].

    The scale back is original / resized size per axis, from the pre-processing's own tensors (pre_hw_f,
    pre_hw_new_f), so it is the exact rounding the resize used.
    """
    n = helper.make_node
    nodes = [
        n("Div", ["pre_hw_f", "pre_hw_new_f"], ["post_scale_hw"], name="post_scale_hw"),
        n("Gather", ["post_scale_hw", "post_xyxy_idx"], ["post_scale4"], axis=0, name="post_scale4"),
        n("Mul", [CORE_BOXES, "post_scale4"], ["post_boxes_scaled"], name="post_boxes_scaled"),
        n("Gather", ["pre_hw_f", "post_xyxy_idx"], ["post_limit4"], axis=0, name="post_limit4"),
        n("Max", ["post_boxes_scaled", "post_zero"], ["post_boxes_pos"], name="post_clip_low"),
        n("Min", ["post_boxes_pos", "post_limit4"], ["post_boxes"], name="post_clip_high"),
        n("NonMaxSuppression", ["post_boxes", CORE_SCORES, "post_max_per_class", "post_iou", "post_min_score"],
          ["post_selected"], center_point_box=0, name="post_nms"),
        n("GatherND", [CORE_SCORES, "post_selected"], ["post_sel_scores"], name="post_sel_scores"),
        n("Gather", ["post_selected", "post_col1"], ["post_sel_class"], axis=1, name="post_sel_class"),
        n("Gather", ["post_selected", "post_col2"], ["post_sel_box"], axis=1, name="post_sel_box"),
        n("Squeeze", ["post_boxes", "post_axis0"], ["post_boxes_l4"], name="post_boxes_l4"),
        n("Gather", ["post_boxes_l4", "post_sel_box"], ["post_sel_boxes"], axis=0, name="post_sel_boxes"),
        n("Shape", ["post_sel_scores"], ["post_n_sel"], name="post_n_sel"),
        n("Min", ["post_n_sel", "post_max_det"], ["post_k"], name="post_k"),
        n("TopK", ["post_sel_scores", "post_k"], [fmt.OUTPUT_NAMES[1], "post_order"], axis=0, largest=1,
          sorted=1, name="post_topk"),
        n("Gather", ["post_sel_boxes", "post_order"], [fmt.OUTPUT_NAMES[0]], axis=0, name="post_out_boxes"),
        n("Gather", ["post_sel_class", "post_order"], [fmt.OUTPUT_NAMES[2]], axis=0, name="post_out_classes"),
    ]
    t = helper.make_tensor
    inits = [
        t("post_xyxy_idx", TensorProto.INT64, [4], [1, 0, 1, 0]),  # [h, w] -> [w, h, w, h]
        t("post_zero", TensorProto.FLOAT, [], [0.0]),
        t("post_max_per_class", TensorProto.INT64, [1], [max_det]),
        t("post_iou", TensorProto.FLOAT, [1], [nms_iou]),
        t("post_min_score", TensorProto.FLOAT, [1], [min_score]),
        t("post_col1", TensorProto.INT64, [], [1]),
        t("post_col2", TensorProto.INT64, [], [2]),
        t("post_axis0", TensorProto.INT64, [1], [0]),
        t("post_max_det", TensorProto.INT64, [1], [max_det]),
    ]
    return nodes, inits


def detector_onnx(detector: Detector, min_score: float = fmt.DEFAULT_MIN_SCORE, nms_iou: float = fmt.DEFAULT_NMS_IOU,
                  max_detections: int = fmt.DEFAULT_MAX_DETECTIONS) -> onnx.ModelProto:
    """The whole detector as one graph: raw image in, final detections out (interface: detector_format)."""
    size = detector.arch.image_size
    core = trace_to_onnx(DetectorCore(detector.cpu().eval()), (torch.zeros(1, 3, size, size),), ["x"],
                         [CORE_BOXES, CORE_SCORES])
    pre_out = "pre_output"
    pre_nodes, pre_inits = preprocess_nodes(size, pre_out)
    core_nodes = rewired_nodes(core, "x", pre_out)
    post, post_inits = postprocess_nodes(size, min_score, nms_iou, max_detections)
    graph = helper.make_graph(
        pre_nodes + core_nodes + post, "defectscope_detector",
        [helper.make_tensor_value_info(fmt.INPUT_NAME, TensorProto.UINT8, ["H", "W", 3])],
        [helper.make_tensor_value_info(fmt.OUTPUT_NAMES[0], TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info(fmt.OUTPUT_NAMES[1], TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info(fmt.OUTPUT_NAMES[2], TensorProto.INT64, ["N"])],
        initializer=list(core.graph.initializer) + pre_inits + post_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------------------------- torch reference
def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda v: (v[:, 2:] - v[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy NMS (ONNX NonMaxSuppression's rule: drop a box whose IoU with a kept one exceeds `iou`)."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    ious = _box_iou(boxes[order], boxes[order])
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= ious[i] > iou
    return torch.tensor(keep, dtype=torch.long)


@torch.no_grad()
def detect_torch(detector: Detector, image: np.ndarray, min_score: float = fmt.DEFAULT_MIN_SCORE,
                 nms_iou: float = fmt.DEFAULT_NMS_IOU, max_detections: int = fmt.DEFAULT_MAX_DETECTIONS,
                 frame: Callable[[np.ndarray, int], torch.Tensor] = to_frame,
                 core: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exported graph's computation in torch, from the raw image: (boxes [N, 4], scores [N], classes [N]).
    `core`: frame -> (boxes, scores, ...) as DetectorCore (default) computes them."""
    size = detector.arch.image_size
    device = next(detector.parameters()).device
    boxes, scores = (core or DetectorCore(detector.eval()))(frame(image, size).to(device))[:2]
    boxes, scores = boxes[0].float().cpu(), scores[0].float().cpu()
    h, w = image.shape[:2]
    sx, sy = frame_scale(h, w, size)
    boxes = boxes * torch.tensor([sx, sy, sx, sy])
    boxes = torch.min(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
    out_b, out_s, out_c = [], [], []
    for c in range(scores.shape[0]):
        cand = (scores[c] > min_score).nonzero().squeeze(1)
        keep = cand[nms(boxes[cand], scores[c, cand], nms_iou)][:max_detections] if len(cand) else cand
        out_b.append(boxes[keep])
        out_s.append(scores[c, keep])
        out_c.append(torch.full((len(keep),), c, dtype=torch.long))
    b, s, c = torch.cat(out_b), torch.cat(out_s), torch.cat(out_c)
    order = s.argsort(descending=True)[:max_detections]
    return b[order].numpy(), s[order].numpy(), c[order].numpy()


# ------------------------------------------------------------------------------------------------------ parity
def _unmatched(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...], floor: float) -> int:
    """Detections of `a` scoring >= floor with no twin in `b` (same class, IoU >= PARITY_IOU_MIN or corners within PARITY_BOX_TOL_PX, close score)."""
    missing = 0
    for box, score, cls in zip(*a, strict=True):
        if score < floor:
            continue
        same = (b[2] == cls) & (np.abs(b[1] - score) <= PARITY_SCORE_TOL)
        if not same.any():
            missing += 1
            continue
        iou = _box_iou(torch.from_numpy(box[None]), torch.from_numpy(b[0][same])).numpy()[0]
        # A box clipped flat against the image edge has no area, hence no IoU: compare its corners instead.
        close = np.abs(b[0][same] - box).max(1) <= PARITY_BOX_TOL_PX
        missing += int(not ((iou >= PARITY_IOU_MIN) | close).any())
    return missing


def check_parity(detector: Detector, model: onnx.ModelProto | bytes, images: Sequence[np.ndarray],
                 min_score: float = fmt.DEFAULT_MIN_SCORE, nms_iou: float = fmt.DEFAULT_NMS_IOU,
                 max_detections: int = fmt.DEFAULT_MAX_DETECTIONS,
                 frame: Callable[[np.ndarray, int], torch.Tensor] = to_frame,
                 core: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
                 extra_feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Torch (own pre-processing `frame`) vs ONNX Runtime on the same raw images; ParityError when they differ.
    `core` and `extra_feeds`: another core than DetectorCore and the graph inputs it takes besides the image.

    Compared: every detection at least PARITY_MARGIN above min_score (and above the last fifth of a full list) must have a twin on the other side (same
    class, IoU >= PARITY_IOU_MIN, |score difference| <= PARITY_SCORE_TOL). Returns the figures for detector.json.
    """
    session = cpu_session(model if isinstance(model, bytes) else model.SerializeToString())
    worst_score, worst_box, compared, problems = 0.0, 0.0, 0, []
    for i, image in enumerate(images):
        ref = detect_torch(detector, image, min_score, nms_iou, max_detections, frame, core)
        got = tuple(session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: image, **(extra_feeds or {})}))
        # Near the max_detections cut, scores 1e-6 apart can swap which detection makes the list: compare above it.
        cut = ref[1][int(0.8 * max_detections)] if len(ref[1]) > 0.8 * max_detections else min_score
        floor = max(min_score, float(cut)) + PARITY_MARGIN
        bad = _unmatched(ref, got, floor) + _unmatched(got, ref, floor)
        compared += int((ref[1] >= floor).sum())
        if bad:
            problems.append(f"image {i} ({image.shape[1]}x{image.shape[0]}): {bad} detections without a twin")
        n = min(len(ref[1]), len(got[1]), 10)
        if n and not bad:
            worst_score = max(worst_score, float(np.abs(ref[1][:n] - got[1][:n]).max()))
            worst_box = max(worst_box, float(np.abs(ref[0][:n] - got[0][:n]).max()))
    if problems:
        raise ParityError("the exported detector disagrees with the torch model: " + "; ".join(problems))
    return {"n_images": len(images), "n_detections_compared": compared, "max_abs_score_diff": worst_score,
            "max_abs_box_diff_px": worst_box, "score_tolerance": PARITY_SCORE_TOL, "iou_min": PARITY_IOU_MIN}


# ----------------------------------------------------------------------------------------------------- publish
def publish(detector: Detector, out_dir: str | Path, classes: list[str], parity_images: Sequence[np.ndarray],
            training: dict[str, Any], validation_samples: Sequence[Any] = ()) -> dict[str, Any]:
    """Export, parity-check, validate (mAP and the score threshold, trainers.detector.validate), then write
    detector.onnx, the state and detector.json (last: a folder with detector.json is complete). Returns the
    metadata written."""
    if len(classes) != detector.arch.num_classes:
        raise ValueError(f"{len(classes)} class names for a {detector.arch.num_classes}-class detector")
    model = detector_onnx(detector)
    data = model.SerializeToString()
    parity = check_parity(detector, data, parity_images)
    validation = validate(data, classes, validation_samples)
    meta = {
        "format": fmt.FORMAT, "classes": list(classes), "input_size": detector.arch.image_size,
        "min_score": fmt.DEFAULT_MIN_SCORE, "nms_iou": fmt.DEFAULT_NMS_IOU,
        "max_detections": fmt.DEFAULT_MAX_DETECTIONS, "score_threshold": validation["score_threshold"],
        "source": "defectscope", "parity": parity, "validation": validation, "architecture": detector.arch.to_dict(), "training": training,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"arch": detector.arch.to_dict(), "classes": list(classes), "state": detector.trainable_state()},
               buffer)
    atomic_write(out / fmt.MODEL_FILE, data)
    atomic_write(out / STATE_FILE, buffer.getvalue())
    atomic_write(out / fmt.METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta
