"""Wrap a torch-exported core graph with DefectScope's pre- and post-processing, as ONNX nodes.

The resulting single graph takes the original image (H x W x 3 uint8 RGB, any size) and returns the normalised
image score and an anomaly map at the original size. Resizing keeps the aspect ratio (thin defects on long parts
survive) and is antialiased (huge images downscale without aliasing). Training runs the same preprocessing graph
through ONNX Runtime, so the features the bank is built from are exactly those inspection sees.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

IMAGE_INPUT = "image"
CORE_INPUT = "x"
CORE_OUTPUTS = ("score_norm", "map_norm")
SCORE_OUTPUT = "score"
MAP_OUTPUT = "anomaly_map"
OPSET = 18
IR_VERSION = 9  # readable by every ONNX Runtime from 1.16 on


def _pre_nodes(image_size: int, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node("Cast", [IMAGE_INPUT], ["pre_float"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Transpose", ["pre_float"], ["pre_chw"], perm=[2, 0, 1], name="pre_transpose"),
        helper.make_node("Unsqueeze", ["pre_chw", "pre_axis0"], ["pre_nchw"], name="pre_unsqueeze"),
        helper.make_node(
            "Resize",
            ["pre_nchw", "", "", "pre_sizes"],
            [out],
            mode="linear",
            antialias=1,
            keep_aspect_ratio_policy="not_larger",
            axes=[2, 3],
            name="pre_resize",
        ),
    ]
    inits = [
        helper.make_tensor("pre_axis0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("pre_sizes", TensorProto.INT64, [2], [image_size, image_size]),
    ]
    return nodes, inits


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["H", "W", 3])


def preprocess_model(image_size: int) -> onnx.ModelProto:
    """The preprocessing alone: image (H x W x 3 uint8) -> 1 x 3 x h x w float, longer side = image_size."""
    nodes, inits = _pre_nodes(image_size, "resized")
    graph = helper.make_graph(
        nodes,
        "defectscope_preprocess",
        [_image_input()],
        [helper.make_tensor_value_info("resized", TensorProto.FLOAT, [1, 3, "h", "w"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def compose_anomaly_model(core: onnx.ModelProto, image_size: int) -> onnx.ModelProto:
    """image -> [preprocess] -> core -> [map back to the original size] -> (score [1], anomaly_map [H, W])."""
    core = onnx.shape_inference.infer_shapes(core)
    pre_out = "pre_resized"
    pre_nodes, pre_inits = _pre_nodes(image_size, pre_out)
    core_nodes = []
    for node in core.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [pre_out if name == CORE_INPUT else name for name in node.input]
        core_nodes.append(node)
    score_norm, map_norm = CORE_OUTPUTS
    post_nodes = [
        helper.make_node("Shape", [IMAGE_INPUT], ["post_hw"], start=0, end=2, name="post_shape"),
        helper.make_node(
            "Resize", [map_norm, "", "", "post_hw"], ["post_map4d"], mode="linear", axes=[2, 3], name="post_resize"
        ),
        helper.make_node("Reshape", ["post_map4d", "post_hw"], [MAP_OUTPUT], name="post_reshape"),
        helper.make_node("Identity", [score_norm], [SCORE_OUTPUT], name="post_score"),
    ]
    graph = helper.make_graph(
        pre_nodes + core_nodes + post_nodes,
        "defectscope_anomaly",
        [_image_input()],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["H", "W"]),
        ],
        initializer=list(core.graph.initializer) + pre_inits,
    )
    opsets = [op for op in core.opset_import if op.domain not in ("", "ai.onnx")]
    version = max([OPSET] + [op.version for op in core.opset_import if op.domain in ("", "ai.onnx")])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", version), *opsets], ir_version=IR_VERSION
    )
    model.functions.extend(core.functions)
    onnx.checker.check_model(model)
    return model
