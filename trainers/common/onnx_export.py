"""Shared pieces of the exporters that put their own pre-processing in front of a torch-traced core (the promptable
segmenter's encoder, the box detector): tracing torch to ONNX, the longest-side pre-processing as ONNX nodes, wiring
it to a core graph's input, and a CPU session for parity checks and feature caching.

The pre-processing takes the original image (H x W x 3 uint8 RGB, any size), resizes its longest side to `size`
(bilinear, antialiased), normalises it with the EfficientNet-Lite pixel statistics and zero-pads bottom/right to
size x size: one definition, so every graph built on it sees the pixels training saw.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD
from trainers.common.onnx_graph import IMAGE_INPUT, IR_VERSION, OPSET

_CPU = ["CPUExecutionProvider"]


def cpu_session(model: bytes | onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU (parity checks and feature caches must not depend on the machine's GPU)."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, opts, providers=_CPU)


def trace_to_onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None) -> onnx.ModelProto:
    """torch -> ONNX with the TorchScript exporter.

    The segmenter's decoder output size depends on the *value* of orig_im_size, which torch.export (dynamo) can
    only express with data-dependent shapes; the tracing exporter records it as ops. Every other graph uses the
    same exporter so all come from one code path.
    """
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings users cannot act on
        torch.onnx.export(
            module, args, buf, dynamo=False, input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes or {}, opset_version=OPSET, do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = IR_VERSION
    return model


def preprocess_nodes(size: int, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """IMAGE_INPUT (H x W x 3 uint8) -> `out` (1 x 3 x size x size float32, normalised, zero-padded).

    New size = floor(side * size / max(H, W) + 0.5), the rounding of SamOnnxModel.resize_longest_image_size, so
    the segmenter decoder's crop of the padding matches what the encoder saw.
    """
    nodes = [
        helper.make_node("Cast", [IMAGE_INPUT], ["pre_float"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Transpose", ["pre_float"], ["pre_chw"], perm=[2, 0, 1], name="pre_transpose"),
        helper.make_node("Unsqueeze", ["pre_chw", "pre_axis0"], ["pre_nchw"], name="pre_unsqueeze"),
        helper.make_node("Shape", [IMAGE_INPUT], ["pre_hw_i"], start=0, end=2, name="pre_shape"),
        helper.make_node("Cast", ["pre_hw_i"], ["pre_hw_f"], to=TensorProto.FLOAT, name="pre_hw_cast"),
        helper.make_node("ReduceMax", ["pre_hw_f"], ["pre_long"], keepdims=1, name="pre_long"),
        helper.make_node("Div", ["pre_target", "pre_long"], ["pre_scale"], name="pre_scale"),
        helper.make_node("Mul", ["pre_hw_f", "pre_scale"], ["pre_hw_scaled"], name="pre_hw_scaled"),
        helper.make_node("Add", ["pre_hw_scaled", "pre_half"], ["pre_hw_half"], name="pre_hw_half"),
        helper.make_node("Floor", ["pre_hw_half"], ["pre_hw_floor"], name="pre_hw_floor"),
        helper.make_node("Max", ["pre_hw_floor", "pre_one"], ["pre_hw_new_f"], name="pre_hw_min1"),
        helper.make_node("Cast", ["pre_hw_new_f"], ["pre_hw_new"], to=TensorProto.INT64, name="pre_hw_new"),
        # Antialiased: huge inspection images shrink without aliasing (no effect when upscaling small crops).
        helper.make_node("Resize", ["pre_nchw", "", "", "pre_hw_new"], ["pre_resized"], mode="linear",
                         antialias=1, axes=[2, 3], name="pre_resize"),
        helper.make_node("Sub", ["pre_resized", "pre_mean"], ["pre_centred"], name="pre_sub_mean"),
        helper.make_node("Div", ["pre_centred", "pre_std"], ["pre_normalised"], name="pre_div_std"),
        helper.make_node("Sub", ["pre_size_i", "pre_hw_new"], ["pre_pad_hw"], name="pre_pad_hw"),
        helper.make_node("Concat", ["pre_zeros6", "pre_pad_hw"], ["pre_pads"], axis=0, name="pre_pads"),
        helper.make_node("Pad", ["pre_normalised", "pre_pads", "pre_pad_value"], [out], mode="constant",
                         name="pre_pad"),
    ]
    inits = [
        helper.make_tensor("pre_axis0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("pre_target", TensorProto.FLOAT, [1], [float(size)]),
        helper.make_tensor("pre_half", TensorProto.FLOAT, [1], [0.5]),
        helper.make_tensor("pre_one", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("pre_mean", TensorProto.FLOAT, [1, 3, 1, 1], [PIXEL_MEAN] * 3),
        helper.make_tensor("pre_std", TensorProto.FLOAT, [1, 3, 1, 1], [PIXEL_STD] * 3),
        helper.make_tensor("pre_size_i", TensorProto.INT64, [2], [size, size]),
        helper.make_tensor("pre_zeros6", TensorProto.INT64, [6], [0] * 6),
        helper.make_tensor("pre_pad_value", TensorProto.FLOAT, [], [0.0]),
    ]
    return nodes, inits


def image_input() -> onnx.ValueInfoProto:
    """The graph input the pre-processing reads: IMAGE_INPUT, H x W x 3 uint8 RGB of any size."""
    return helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["H", "W", 3])


def rewired_nodes(core: onnx.ModelProto, core_input: str, source: str) -> list[onnx.NodeProto]:
    """Copies of `core`'s nodes reading `source` wherever they read `core_input` (to feed a traced core from the
    pre-processing's output)."""
    nodes = []
    for node in core.graph.node:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.input[:] = [source if name == core_input else name for name in node.input]
        nodes.append(node)
    return nodes


def parity_check_images(samples: Iterable[Any], n: int = 3) -> list[np.ndarray]:
    """A few real images and an odd-shaped crop of one: parity is checked where aspect ratios round."""
    images = []
    for s in samples:
        try:
            images.append(read_image(s.image_path))
        except DefectScopeError:
            continue
        if len(images) >= n:
            break
    if images:
        img = images[0]
        h, w = img.shape[:2]
        images.append(np.ascontiguousarray(img[: max(8, h * 2 // 3 + 1), : max(8, w - 3)]))
    return images
