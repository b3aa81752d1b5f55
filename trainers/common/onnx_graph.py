"""Wrap a torch-exported core graph with DefectScope's pre- and post-processing, as ONNX nodes.

The resulting single graph takes the original image (H x W x 3 uint8 RGB, any size) and returns the normalised
image score and an anomaly map at the original size. Resizing keeps the aspect ratio (thin defects on long parts
survive) and is antialiased (huge images downscale without aliasing). Training runs the same preprocessing graph
through ONNX Runtime, so the features the bank is built from are exactly those inspection sees.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from engine.errors import DefectScopeError

IMAGE_INPUT = "image"
CORE_INPUT = "x"
CORE_OUTPUTS = ("score_norm", "map_norm")
SCORE_OUTPUT = "score"
MAP_OUTPUT = "anomaly_map"
RESIZED = "pre_resized"  # the composed graph's preprocessed tensor (1 x 3 x h x w), what its core really sees
OPSET = 18
IR_VERSION = 9  # readable by every ONNX Runtime from 1.16 on


RESIZE_POLICIES = ("area", "stretch")
# Twice the backbone's coarsest stride: every stride-2 layer sees an even size at full and at half scale.
SIDE_MULTIPLE = 64


def check_image_size(image_size: int) -> int:
    """`image_size` itself, refused unless a positive multiple of SIDE_MULTIPLE: rounding it here would train and
    export a graph of another size than the one model.json records (288 used to become 256, silently)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < SIDE_MULTIPLE \
            or image_size % SIDE_MULTIPLE:
        lower = max(SIDE_MULTIPLE, SIDE_MULTIPLE * (int(image_size) // SIDE_MULTIPLE)) \
            if isinstance(image_size, int) else SIDE_MULTIPLE
        raise DefectScopeError(f"image_size must be a multiple of {SIDE_MULTIPLE} (at least {SIDE_MULTIPLE}), got "
                               f"{image_size!r}: use {lower} or {lower + SIDE_MULTIPLE}")
    return image_size


def _pre_nodes(image_size: int, out: str, policy: str = "area") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from IMAGE_INPUT to `out` (1 x 3 x h x w float, 0..255).

    policy: "area" keeps the aspect ratio with h*w ~= image_size**2 (the patch count, hence latency, is fixed and
    narrow parts are not squashed), each side rounded to a multiple of 64 (a square image: exactly image_size);
    "stretch" squashes to image_size x image_size. image_size must be a multiple of 64 (`check_image_size`).
    """
    check_image_size(image_size)
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy '{policy}'; known: {', '.join(RESIZE_POLICIES)}")
    nodes = [
        helper.make_node("Cast", [IMAGE_INPUT], ["pre_float"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Transpose", ["pre_float"], ["pre_chw"], perm=[2, 0, 1], name="pre_transpose"),
        helper.make_node("Unsqueeze", ["pre_chw", "pre_axis0"], ["pre_nchw"], name="pre_unsqueeze"),
    ]
    inits = [helper.make_tensor("pre_axis0", TensorProto.INT64, [1], [0])]
    resize_attrs: dict = {"mode": "linear", "antialias": 1, "axes": [2, 3]}
    sizes = "pre_sizes"
    if policy == "stretch":
        inits.append(helper.make_tensor(sizes, TensorProto.INT64, [2], [image_size] * 2))
    else:
        # sizes = 64 * max(1, round([H, W] * image_size / sqrt(H * W) / 64))
        sizes = "pre_area_sizes"
        nodes += [
            helper.make_node("Shape", [IMAGE_INPUT], ["pre_hw_i"], start=0, end=2, name="pre_shape"),
            helper.make_node("Cast", ["pre_hw_i"], ["pre_hw_f"], to=TensorProto.FLOAT, name="pre_hw_cast"),
            helper.make_node("ReduceProd", ["pre_hw_f"], ["pre_area"], keepdims=1, name="pre_area"),
            helper.make_node("Sqrt", ["pre_area"], ["pre_side"], name="pre_side"),
            helper.make_node("Div", ["pre_target", "pre_side"], ["pre_scale"], name="pre_scale"),
            helper.make_node("Mul", ["pre_hw_f", "pre_scale"], ["pre_hw_scaled"], name="pre_hw_scaled"),
            helper.make_node("Div", ["pre_hw_scaled", "pre_multiple"], ["pre_hw_units"], name="pre_hw_units"),
            helper.make_node("Round", ["pre_hw_units"], ["pre_hw_round"], name="pre_hw_round"),
            helper.make_node("Max", ["pre_hw_round", "pre_one"], ["pre_hw_clamped"], name="pre_hw_min"),
            helper.make_node("Mul", ["pre_hw_clamped", "pre_multiple"], ["pre_hw_final"], name="pre_hw_final"),
            helper.make_node("Cast", ["pre_hw_final"], [sizes], to=TensorProto.INT64, name="pre_sizes_cast"),
        ]
        inits += [
            helper.make_tensor("pre_target", TensorProto.FLOAT, [1], [float(image_size)]),
            helper.make_tensor("pre_multiple", TensorProto.FLOAT, [1], [float(SIDE_MULTIPLE)]),
            helper.make_tensor("pre_one", TensorProto.FLOAT, [1], [1.0]),
        ]
    nodes.append(helper.make_node("Resize", ["pre_nchw", "", "", sizes], [out], name="pre_resize", **resize_attrs))
    return nodes, inits


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["H", "W", 3])


def preprocess_model(image_size: int, policy: str = "area") -> onnx.ModelProto:
    """The preprocessing alone: image (H x W x 3 uint8) -> 1 x 3 x h x w float (see `_pre_nodes`)."""
    nodes, inits = _pre_nodes(image_size, "resized", policy)
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


def compose_anomaly_model(core: onnx.ModelProto, image_size: int, policy: str = "area") -> onnx.ModelProto:
    """image -> [preprocess] -> core -> [map back to the original size] -> (score [1], anomaly_map [H, W])."""
    core = onnx.shape_inference.infer_shapes(core)
    pre_out = RESIZED
    pre_nodes, pre_inits = _pre_nodes(image_size, pre_out, policy)
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
