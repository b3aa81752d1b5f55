"""Export to the open-set detector format (engine.runtime.open_detector_format).

open_detector.onnx = the closed-set detector's pre-processing -> OpenDetectorCore (boxes, per-query scores, region
embeddings) -> the closed-set post-processing (scale back, clip, per-class NonMaxSuppression, top-k), plus every
location's box and embedding as outputs for visual prompts. The number of queries is a dynamic axis.

Before anything is written the torch model and ONNX Runtime run the same raw images with the trained classes' text
queries and with a foreign query set (other vectors, another count), and publishing is refused when the
detections or region embeddings differ. The visual-prototype calibration is fitted on the validation images with
the runtime's own prototype rule (engine.runtime.open_detector.prototype), so it matches what inspection does.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.runtime import detector_format as closed_fmt
from engine.runtime import open_detector_format as fmt
from engine.runtime.open_detector import prototype, region_labels
from engine.runtime.text import METADATA_FILE as TEXT_METADATA_FILE
from trainers.common.io import atomic_write
from trainers.common.onnx_export import cpu_session, preprocess_nodes, rewired_nodes, trace_to_onnx
from trainers.common.onnx_graph import IR_VERSION, OPSET
from trainers.detector.export import (
    CORE_BOXES,
    CORE_SCORES,
    STATE_FILE,
    ParityError,
    check_parity,
    postprocess_nodes,
)
from trainers.detector.frame import to_frame
from trainers.detector.open_model import OpenDetector, OpenDetectorCore
from trainers.detector.validate import validate

CORE_EMBEDDINGS = "core_embeddings"
EMBEDDING_TOL = 1e-3
DEFAULT_PROTOTYPE_CALIBRATION = (10.0, -8.0)  # cosine 0.8 -> 0.5 before centerness: used without validation boxes
MAX_CALIBRATION_IMAGES = 60


def open_detector_onnx(detector: OpenDetector, min_score: float = closed_fmt.DEFAULT_MIN_SCORE,
                       nms_iou: float = closed_fmt.DEFAULT_NMS_IOU,
                       max_detections: int = closed_fmt.DEFAULT_MAX_DETECTIONS) -> onnx.ModelProto:
    size, dim = detector.arch.image_size, detector.dim
    example = (torch.zeros(1, 3, size, size), torch.nn.functional.normalize(torch.ones(2, dim), dim=-1),
               torch.tensor([[10.0, -4.0], [10.0, -4.0]]))
    core = trace_to_onnx(OpenDetectorCore(detector.cpu().eval()), example,
                         ["x", fmt.QUERY_INPUT, fmt.CALIBRATION_INPUT], [CORE_BOXES, CORE_SCORES, CORE_EMBEDDINGS],
                         {fmt.QUERY_INPUT: {0: "C"}, fmt.CALIBRATION_INPUT: {0: "C"}, CORE_SCORES: {1: "C"}})
    pre_out = "pre_output"
    pre_nodes, pre_inits = preprocess_nodes(size, pre_out)
    post, post_inits = postprocess_nodes(size, min_score, nms_iou, max_detections)
    region_nodes = [
        helper.make_node("Identity", ["post_boxes_l4"], [fmt.REGION_OUTPUTS[0]], name="region_boxes"),
        helper.make_node("Squeeze", [CORE_EMBEDDINGS, "post_axis0"], [fmt.REGION_OUTPUTS[1]],
                         name="region_embeddings"),
    ]
    graph = helper.make_graph(
        pre_nodes + rewired_nodes(core, "x", pre_out) + post + region_nodes, "defectscope_open_detector",
        [helper.make_tensor_value_info(fmt.IMAGE_INPUT, TensorProto.UINT8, ["H", "W", 3]),
         helper.make_tensor_value_info(fmt.QUERY_INPUT, TensorProto.FLOAT, ["C", dim]),
         helper.make_tensor_value_info(fmt.CALIBRATION_INPUT, TensorProto.FLOAT, ["C", 2])],
        [helper.make_tensor_value_info(fmt.OUTPUT_NAMES[0], TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info(fmt.OUTPUT_NAMES[1], TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info(fmt.OUTPUT_NAMES[2], TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info(fmt.REGION_OUTPUTS[0], TensorProto.FLOAT, ["L", 4]),
         helper.make_tensor_value_info(fmt.REGION_OUTPUTS[1], TensorProto.FLOAT, ["L", dim])],
        initializer=list(core.graph.initializer) + pre_inits + post_inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _feeds(queries: torch.Tensor, calibration: torch.Tensor) -> dict[str, np.ndarray]:
    return {fmt.QUERY_INPUT: queries.detach().float().numpy(),
            fmt.CALIBRATION_INPUT: calibration.detach().float().numpy()}


def _foreign_queries(detector: OpenDetector, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries the training never saw (random directions, one more than the known classes) with a calibration
    loose enough that they produce detections, so the parity check covers the query path itself."""
    g = torch.Generator().manual_seed(seed)
    n = detector.arch.num_classes + 1
    q = torch.nn.functional.normalize(torch.randn(n, detector.dim, generator=g), dim=-1)
    q[0] = detector.class_queries()[0]
    return q, torch.tensor([[20.0, 2.0]] * n)


def check_open_parity(detector: OpenDetector, model: bytes, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """check_parity (detections) for the trained text queries and a foreign query set, and the region embeddings
    compared element-wise; ParityError when they differ."""
    detector = detector.eval()
    core = OpenDetectorCore(detector)
    figures: dict[str, Any] = {}
    for name, (q, cal) in {"class_queries": (detector.class_queries(), detector.text_calibration(
            detector.arch.num_classes)), "foreign_queries": _foreign_queries(detector)}.items():
        with torch.no_grad():
            figures[name] = check_parity(detector, model, images, core=lambda x, q=q, cal=cal: core(x, q, cal),
                                         extra_feeds=_feeds(q, cal))
    session = cpu_session(model)
    worst = 0.0
    q, cal = detector.class_queries(), detector.text_calibration(detector.arch.num_classes)
    for image in images:
        with torch.no_grad():
            ref = core(to_frame(image, detector.arch.image_size), q, cal)[2][0].numpy()
        got = session.run([fmt.REGION_OUTPUTS[1]], {fmt.IMAGE_INPUT: image, **_feeds(q, cal)})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    if not worst <= EMBEDDING_TOL:
        raise ParityError(f"the exported open-set detector's region embeddings differ from torch by {worst:.2e}")
    figures["max_abs_embedding_diff"] = worst
    return figures


def fit_prototype_calibration(model: bytes, samples: Sequence[Any], seed: int = 0) -> dict[str, Any]:
    """Logistic fit of "cosine to a one-shot prototype -> same class" on validation regions.

    Per class, each validation image with a box of that class gives a prototype (the runtime's rule); every
    location of the other validation images is a positive when its region box overlaps a box of that class by
    IoU >= PROTOTYPE_IOU, else a negative. The fit gives the (scale, bias) a prototype query is run with."""
    from sklearn.linear_model import LogisticRegression

    session = cpu_session(model)
    rng = np.random.default_rng(seed)
    regions = []
    for s in list(samples)[:MAX_CALIBRATION_IMAGES]:
        try:
            image = read_image(s.image_path)
        except DefectScopeError:
            continue
        dummy = _feeds(torch.zeros(1, fmt.EMBEDDING_DIM), torch.zeros(1, 2))
        boxes, emb = session.run(list(fmt.REGION_OUTPUTS), {fmt.IMAGE_INPUT: image, **dummy})
        regions.append((s, boxes, emb))
    cos, labels = [], []
    for cls in sorted({int(c) for s, _, _ in regions for c in s.labels}):
        holders = [r for r in regions if (r[0].labels == cls).any()]
        for i in rng.permutation(len(holders))[:5]:
            s, boxes, emb = holders[i]
            proto = prototype(boxes, emb, [s.boxes[s.labels == cls][0]])
            for other in regions:
                if other is holders[i]:
                    continue
                cos.append(other[2] @ proto)
                labels.append(region_labels(other[1], other[0].boxes[other[0].labels == cls]))
    if not cos or len({int(v) for lab in labels for v in np.unique(lab)}) < 2:
        scale, bias = DEFAULT_PROTOTYPE_CALIBRATION
        return {"scale": scale, "bias": bias, "fitted_on": 0}
    x, y = np.concatenate(cos)[:, None], np.concatenate(labels)
    fit = LogisticRegression(C=10.0, class_weight="balanced").fit(x, y)
    return {"scale": float(fit.coef_[0, 0]), "bias": float(fit.intercept_[0]), "fitted_on": len(y),
            "positives": int(y.sum())}


def publish_open(detector: OpenDetector, out_dir: str | Path, classes: list[str], parity_images: Sequence[np.ndarray],
                 training: dict[str, Any], validation_samples: Sequence[Any], prompts: dict[str, list[str]],
                 text_encoder: str | Path) -> dict[str, Any]:
    """Export, parity-check, validate with the class queries, fit the prototype calibration, then write the
    folder (open_detector.json last: a folder with it is complete). Returns the metadata written."""
    if len(classes) != detector.arch.num_classes:
        raise ValueError(f"{len(classes)} class names for a {detector.arch.num_classes}-class detector")
    detector = detector.cpu().eval()
    data = open_detector_onnx(detector).SerializeToString()
    parity = check_open_parity(detector, data, parity_images)
    queries = detector.class_queries().detach().float()
    calibration = detector.text_calibration(len(classes)).detach()
    validation = validate(data, classes, validation_samples, _feeds(queries, calibration))
    proto_cal = fit_prototype_calibration(data, validation_samples)
    scale, bias = (float(v) for v in calibration[0])
    meta = {
        "format": fmt.FORMAT, "classes": list(classes), "prompts": {c: list(prompts[c]) for c in classes},
        "embedding_dim": detector.dim, "text_calibration": [scale, bias],
        "prototype_calibration": [proto_cal["scale"], proto_cal["bias"]], "prototype_fit": proto_cal,
        "input_size": detector.arch.image_size, "min_score": closed_fmt.DEFAULT_MIN_SCORE,
        "nms_iou": closed_fmt.DEFAULT_NMS_IOU, "max_detections": closed_fmt.DEFAULT_MAX_DETECTIONS,
        "score_threshold": validation["score_threshold"], "source": "defectscope", "parity": parity,
        "validation": validation, "architecture": {**detector.arch.to_dict(), "embedding_dim": detector.dim},
        "training": training,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder_dst = out / fmt.TEXT_ENCODER_DIR
    if Path(text_encoder).resolve() != encoder_dst.resolve():
        if not (Path(text_encoder) / TEXT_METADATA_FILE).is_file():
            raise DefectScopeError(f"{text_encoder}: not an exported text encoder ({TEXT_METADATA_FILE} missing)")
        shutil.rmtree(encoder_dst, ignore_errors=True)
        shutil.copytree(text_encoder, encoder_dst)
    buffer = io.BytesIO()
    torch.save({"arch": detector.arch.to_dict(), "classes": list(classes), "kind": "open",
                "state": detector.trainable_state()}, buffer)
    npy = io.BytesIO()
    np.save(npy, queries.numpy().astype(np.float32))
    atomic_write(out / fmt.MODEL_FILE, data)
    atomic_write(out / fmt.QUERIES_FILE, npy.getvalue())
    atomic_write(out / STATE_FILE, buffer.getvalue())
    atomic_write(out / fmt.METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta

