"""Export to the defect segmentation format (engine.runtime.defect_segmentation_format): one ONNX graph from the raw
image to labels, defect probability and class scores in original pixels, and its metadata.

defect_segmentation.onnx = the longest-side pre-processing shared with the detector (trainers.common.onnx_export) ->
SegmentationNet (stride-4 logits) -> upsample to the frame, softmax, crop the padding, resize to the original size
-> the three outputs. Before anything is written, `check_parity` runs the torch model on raw uint8 images (its own
framing, trainers.detector.frame, and ONNX's resize rule, trainers.common.torch_preprocess) and ONNX Runtime on the
same raw images, and refuses to publish when they differ; then the graph about to be published is evaluated on the
held-out images (engine.segmentation_eval), and the metadata is written last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from engine.datasets.segmentation import SegSample
from engine.errors import DefectScopeError
from engine.jobs.registry import Progress
from engine.runtime import defect_segmentation_format as fmt
from engine.segmentation_eval import Segment, segmentation_metrics
from trainers.common.io import atomic_write
from trainers.common.onnx_export import (
    cpu_session,
    image_input,
    preprocess_nodes,
    rewired_nodes,
    trace_to_onnx,
)
from trainers.common.onnx_graph import IR_VERSION, OPSET
from trainers.common.torch_preprocess import onnx_resize
from trainers.defectseg.model import SegmentationNet
from trainers.detector.frame import content_shape, to_frame

CORE_LOGITS = "core_logits"
# Two float32 graphs of the same ops in another order differ by ~1e-6 in probability; past this a side computes
# something else (another resize, another crop).
PARITY_PROB_TOL = 1e-3


class ParityError(DefectScopeError):
    """The ONNX graph's outputs differ from the torch model's on the same raw image."""


def postprocess_nodes(image_size: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """CORE_LOGITS [1, K + 1, S/4, S/4] -> labels, defect_probability, class_scores (defect_segmentation_format).

    The crop and the final size come from the pre-processing's own tensors (pre_hw_new: the resized image inside
    the frame; pre_hw_i: the original H, W), so they are the exact rounding its resize used."""
    n = helper.make_node
    labels, prob, scores = fmt.OUTPUT_NAMES
    nodes = [
        n("Resize", [CORE_LOGITS, "", "", "post_frame_hw"], ["post_logits"], mode="linear", axes=[2, 3],
          name="post_upsample"),
        n("Softmax", ["post_logits"], ["post_prob_frame"], axis=1, name="post_softmax"),
        n("Slice", ["post_prob_frame", "post_zeros2", "pre_hw_new", "post_axes23"], ["post_prob_content"],
          name="post_crop"),
        n("Resize", ["post_prob_content", "", "", "pre_hw_i"], ["post_prob"], mode="linear", axes=[2, 3],
          name="post_to_original"),
        n("Slice", ["post_prob", "post_zero1", "post_one1", "post_axis1"], ["post_background"],
          name="post_background"),
        n("Sub", ["post_one_f", "post_background"], ["post_defect4"], name="post_defect"),
        n("Reshape", ["post_defect4", "pre_hw_i"], [prob], name="post_defect_hw"),
        n("Slice", ["post_prob", "post_one1", "post_end1", "post_axis1"], ["post_classes"], name="post_classes"),
        n("ReduceMax", ["post_classes", "post_axes023"], [scores], keepdims=0, name="post_class_scores"),
        n("ArgMax", ["post_classes"], ["post_argmax"], axis=1, keepdims=0, name="post_argmax"),
        n("Add", ["post_argmax", "post_one_i"], ["post_label_i"], name="post_label_1based"),
        n("Cast", ["post_label_i"], ["post_label_u8"], to=TensorProto.UINT8, name="post_label_u8"),
        n("Reshape", ["post_label_u8", "pre_hw_i"], ["post_label_hw"], name="post_label_hw"),
        n("GreaterOrEqual", [prob, "post_threshold"], ["post_is_defect"], name="post_is_defect"),
        n("Where", ["post_is_defect", "post_label_hw", "post_zero_u8"], [labels], name="post_labels"),
    ]
    t = helper.make_tensor
    inits = [
        t("post_frame_hw", TensorProto.INT64, [2], [image_size, image_size]),
        t("post_zeros2", TensorProto.INT64, [2], [0, 0]),
        t("post_axes23", TensorProto.INT64, [2], [2, 3]),
        t("post_zero1", TensorProto.INT64, [1], [0]),
        t("post_one1", TensorProto.INT64, [1], [1]),
        t("post_end1", TensorProto.INT64, [1], [fmt.MAX_CLASSES + 1]),
        t("post_axis1", TensorProto.INT64, [1], [1]),
        t("post_axes023", TensorProto.INT64, [3], [0, 2, 3]),
        t("post_one_f", TensorProto.FLOAT, [], [1.0]),
        t("post_one_i", TensorProto.INT64, [], [1]),
        t("post_threshold", TensorProto.FLOAT, [], [fmt.LABEL_THRESHOLD]),
        t("post_zero_u8", TensorProto.UINT8, [], [0]),
    ]
    return nodes, inits


def segmentation_onnx(net: SegmentationNet) -> onnx.ModelProto:
    """The whole model as one graph: raw image in, per-pixel outputs at the original size out."""
    size = net.arch.image_size
    core = trace_to_onnx(net.cpu().eval(), (torch.zeros(1, 3, size, size),), ["x"], [CORE_LOGITS])
    pre_out = "pre_output"
    pre_nodes, pre_inits = preprocess_nodes(size, pre_out)
    post_nodes, post_inits = postprocess_nodes(size)
    labels, prob, scores = fmt.OUTPUT_NAMES
    graph = helper.make_graph(
        pre_nodes + rewired_nodes(core, "x", pre_out) + post_nodes, "defectscope_defect_segmentation",
        [image_input()],
        [helper.make_tensor_value_info(labels, TensorProto.UINT8, ["H", "W"]),
         helper.make_tensor_value_info(prob, TensorProto.FLOAT, ["H", "W"]),
         helper.make_tensor_value_info(scores, TensorProto.FLOAT, [net.arch.num_classes])],
        initializer=list(core.graph.initializer) + pre_inits + post_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


@torch.no_grad()
def probabilities_torch(net: SegmentationNet, image: np.ndarray) -> torch.Tensor:
    """[K + 1, H, W] float64 probabilities at the original size, computed from the raw image as the graph does."""
    size = net.arch.image_size
    h, w = image.shape[:2]
    logits = net.eval()(to_frame(image, size).to(next(net.parameters()).device)).double().cpu()
    prob = onnx_resize(logits, (size, size), antialias=False).softmax(1)
    ch, cw = content_shape(h, w, size)
    return onnx_resize(prob[..., :ch, :cw], (h, w), antialias=False)[0]


def outputs_from_probabilities(prob: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, defect probability, class scores) from [K + 1, H, W] probabilities: the graph's post-processing."""
    defect = 1 - prob[0]
    classes = prob[1:]
    labels = torch.where(defect >= fmt.LABEL_THRESHOLD, classes.argmax(0) + 1, 0)
    return labels.to(torch.uint8).numpy(), defect.float().numpy(), classes.amax((1, 2)).float().numpy()


def segment_torch(net: SegmentationNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exported graph's computation in torch, from the raw image: (labels, defect probability, class scores)."""
    return outputs_from_probabilities(probabilities_torch(net, image))


def check_parity(net: SegmentationNet, model: bytes, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Torch (its own framing) vs ONNX Runtime on the same raw images; ParityError when they differ.

    Compared: defect probability and class scores within PARITY_PROB_TOL; labels equal wherever the decision is not
    within that tolerance of a tie (defect probability near LABEL_THRESHOLD, or two defect classes nearly equal).
    Returns the figures for defect_segmentation.json."""
    session = cpu_session(model)
    worst_prob = worst_score = 0.0
    n_pixels = n_ambiguous = 0
    problems = []
    for i, image in enumerate(images):
        probs = probabilities_torch(net, image)
        ref_labels, ref_prob, ref_scores = outputs_from_probabilities(probs)
        labels, prob, scores = session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: image})
        d_prob = float(np.abs(ref_prob - prob).max())
        d_score = float(np.abs(ref_scores - scores).max())
        worst_prob, worst_score = max(worst_prob, d_prob), max(worst_score, d_score)
        ambiguous = np.abs(ref_prob - fmt.LABEL_THRESHOLD) <= PARITY_PROB_TOL
        if len(ref_scores) > 1:  # which defect class only matters where the pixel is (nearly) a defect
            top2 = torch.topk(probs[1:], 2, dim=0).values.numpy()
            ambiguous |= ((top2[0] - top2[1]) <= PARITY_PROB_TOL) & (ref_prob >= fmt.LABEL_THRESHOLD - PARITY_PROB_TOL)
        differ = int(((labels != ref_labels) & ~ambiguous).sum())
        n_pixels += labels.size
        n_ambiguous += int(ambiguous.sum())
        if d_prob > PARITY_PROB_TOL or d_score > PARITY_PROB_TOL or differ:
            problems.append(f"image {i} ({image.shape[1]}x{image.shape[0]}): probability differs by {d_prob:.2e}, "
                            f"class scores by {d_score:.2e}, {differ} labels differ")
    if problems:
        raise ParityError("the exported defect segmentation model disagrees with the torch model: "
                          + "; ".join(problems))
    return {"n_images": len(images), "n_pixels": n_pixels, "max_abs_probability_diff": worst_prob,
            "max_abs_class_score_diff": worst_score, "n_ambiguous_label_pixels": n_ambiguous,
            "tolerance": PARITY_PROB_TOL}


def onnx_segment(model: bytes) -> Segment:
    """A Segment function (engine.segmentation_eval) over the graph about to be published, on the CPU."""
    session = cpu_session(model)

    def segment(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, prob, _ = session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: image})
        return labels, prob

    return segment


def publish(net: SegmentationNet, out_dir: str | Path, classes: Sequence[str], parity_images: Sequence[np.ndarray],
            held_out: Sequence[SegSample], training: dict[str, Any], dataset_root: str | Path,
            progress: Progress | None = None) -> dict[str, Any]:
    """Export, parity-check, evaluate on the held-out images, then write defect_segmentation.onnx and (last: a
    folder with it is complete) defect_segmentation.json. Returns the metadata written."""
    report = progress or (lambda _f, _m: None)
    if len(classes) != net.arch.num_classes:
        raise ValueError(f"{len(classes)} class names for a {net.arch.num_classes}-class model")
    data = segmentation_onnx(net).SerializeToString()
    parity = check_parity(net, data, parity_images)
    validation: dict[str, Any] = {"images": "held out (engine.datasets.segmentation): never used for training "
                                            "or for any choice made in training"}
    if held_out:
        metrics = segmentation_metrics(onnx_segment(data), held_out, list(classes), report)
        validation.update({k: v for k, v in metrics.items() if k != "per_image"})
    else:
        validation["miou"] = None
    meta = {
        "format": fmt.FORMAT, "classes": list(classes), "input_size": net.arch.image_size,
        "score_threshold": fmt.LABEL_THRESHOLD, "backbone": net.arch.backbone, "architecture": net.arch.to_dict(),
        "source": "defectscope", "dataset_root": str(Path(dataset_root).resolve()), "parity": parity,
        "validation": validation, "training": training,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / fmt.MODEL_FILE, data)
    atomic_write(out / fmt.METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta
