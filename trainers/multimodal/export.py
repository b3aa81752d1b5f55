"""ONNX graphs of the multimodal model: RGB patch features (resize inside) and the distillation networks."""

from __future__ import annotations

import logging
import warnings

import onnx
import torch
from onnx import compose

from trainers.common.onnx_graph import preprocess_model
from trainers.patchcore.model import PatchFeatures


def _export(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_name: str,
            dynamic: dict | None = None) -> onnx.ModelProto:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=dynamic, opset_version=18,
                                    external_data=False, verbose=False)
    return program.model_proto


def rgb_features_graph(features: PatchFeatures, image_size: int) -> onnx.ModelProto:
    """image (H x W x 3 uint8) -> resized to image_size^2 (stretch) -> 1 x D x g x g patch features."""
    core = _export(features, torch.rand(1, 3, image_size, image_size) * 255, "x", "features")
    pre = preprocess_model(image_size, "stretch")
    pre = onnx.version_converter.convert_version(pre, core.opset_import[0].version) if (
        pre.opset_import[0].version != core.opset_import[0].version) else pre
    pre.ir_version = core.ir_version = min(pre.ir_version, core.ir_version)
    merged = compose.merge_models(pre, core, io_map=[("resized", "x")])
    onnx.checker.check_model(merged)
    return merged


def mlp_graph(mlp: torch.nn.Module, in_dim: int) -> onnx.ModelProto:
    """N x in_dim -> N x out_dim, N dynamic."""
    n = torch.export.Dim("n", min=1, max=1 << 22)
    return _export(mlp, torch.randn(4, in_dim), "features", "predicted", {"x": {0: n}})
