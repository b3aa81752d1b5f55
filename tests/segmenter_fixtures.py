"""Build a tiny, randomly initialised SAM and export it into the promptable-segmenter format (tests only).

The real exporter for user checkpoints lives in the trainers; this one exists so the runtime can be tested against
a model whose torch reference is at hand. It follows engine.runtime.segmenter_format exactly: an encoder taking the
original uint8 image with resize / normalise / pad inside the graph, and SamOnnxModel(return_single_mask=False) as
the decoder.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from engine.runtime import segmenter_format as fmt

INPUT_SIZE = 256
EMBED_DIM = 256  # the real SAM prompt/decoder width, so decoder latency here is close to a real decoder's
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
OPSET = 17


def import_segment_anything() -> None:
    """segment_anything's modelling classes without its package __init__ (which needs torchvision): the one shim
    in trainers.sam._segment_anything does it."""
    import trainers.sam._segment_anything  # noqa: F401


def build_tiny_sam(seed: int = 0) -> torch.nn.Module:
    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = INPUT_SIZE // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=64, img_size=INPUT_SIZE, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=(1,), window_size=7, out_chans=EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=EMBED_DIM, image_embedding_size=(grid, grid), input_image_size=(INPUT_SIZE, INPUT_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    # Random weights give near-empty or near-full masks; larger output-head weights make the four masks differ,
    # so multimask selection and prompt handling are actually exercised.
    with torch.no_grad():
        for p in sam.mask_decoder.output_hypernetworks_mlps.parameters():
            p.mul_(4.0)
    return sam.eval()


def _preprocess_nodes(out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """image (H x W x 3 uint8) -> `out` (1 x 3 x S x S float): resize longest side to S, normalise, pad."""
    s = float(INPUT_SIZE)
    nodes = [
        helper.make_node("Cast", ["image"], ["p_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["p_f"], ["p_chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["p_chw", "p_axis0"], ["p_nchw"]),
        # new (h, w) = floor([H, W] * S / max(H, W) + 0.5), as SamOnnxModel.resize_longest_image_size
        helper.make_node("Shape", ["image"], ["p_hw_i"], start=0, end=2),
        helper.make_node("Cast", ["p_hw_i"], ["p_hw"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["p_hw"], ["p_long"], keepdims=1),
        helper.make_node("Div", ["p_s", "p_long"], ["p_scale"]),
        helper.make_node("Mul", ["p_hw", "p_scale"], ["p_hw_scaled"]),
        helper.make_node("Add", ["p_hw_scaled", "p_half"], ["p_hw_half"]),
        helper.make_node("Floor", ["p_hw_half"], ["p_hw_new_f"]),
        helper.make_node("Cast", ["p_hw_new_f"], ["p_hw_new"], to=TensorProto.INT64),
        helper.make_node("Resize", ["p_nchw", "", "", "p_hw_new"], ["p_resized"], mode="linear", antialias=1,
                         axes=[2, 3]),
        helper.make_node("Sub", ["p_resized", "p_mean"], ["p_centered"]),
        helper.make_node("Div", ["p_centered", "p_std"], ["p_norm"]),
        # pads = [0, 0, 0, 0, 0, 0, S - h, S - w]
        helper.make_node("Sub", ["p_s_i", "p_hw_new"], ["p_pad_hw"]),
        helper.make_node("Concat", ["p_zeros6", "p_pad_hw"], ["p_pads"], axis=0),
        helper.make_node("Pad", ["p_norm", "p_pads"], [out], mode="constant"),
    ]
    inits = [
        helper.make_tensor("p_axis0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("p_s", TensorProto.FLOAT, [1], [s]),
        helper.make_tensor("p_half", TensorProto.FLOAT, [1], [0.5]),
        helper.make_tensor("p_mean", TensorProto.FLOAT, [1, 3, 1, 1], list(PIXEL_MEAN)),
        helper.make_tensor("p_std", TensorProto.FLOAT, [1, 3, 1, 1], list(PIXEL_STD)),
        helper.make_tensor("p_s_i", TensorProto.INT64, [2], [INPUT_SIZE, INPUT_SIZE]),
        helper.make_tensor("p_zeros6", TensorProto.INT64, [6], [0] * 6),
    ]
    return nodes, inits


def export_encoder(sam: torch.nn.Module, path: Path) -> None:
    core_path = path.with_name("encoder_core.onnx")
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(sam.image_encoder, (example,), str(core_path), dynamo=False, opset_version=18,
                          input_names=["x"], output_names=["image_embeddings"])
    core = onnx.load(str(core_path))
    core_path.unlink()
    pre_nodes, pre_inits = _preprocess_nodes("p_padded")
    core_nodes = []
    for node in core.graph.node:
        node.input[:] = ["p_padded" if name == "x" else name for name in node.input]
        core_nodes.append(node)
    grid = INPUT_SIZE // 16
    graph = helper.make_graph(
        pre_nodes + core_nodes, "tiny_sam_encoder",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", 3])],
        [helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, EMBED_DIM, grid, grid])],
        initializer=list(core.graph.initializer) + pre_inits,
    )
    # Resize with antialias needs opset 18 (the core is exported at 18 too: ReduceMean changed form there).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def decoder_reference(sam: torch.nn.Module) -> torch.nn.Module:
    """SamOnnxModel(return_single_mask=False) with the crop fixed for tracing.

    segment-anything 1.0 on PyPI crops the padded mask with `masks[..., : int(prepadded_size[0]), ...]`; the
    tracing exporter freezes those ints at the dummy orig_im_size, so every other aspect ratio gets a wrongly
    cropped, stretched mask. The repository's later version slices with int64 tensors, which trace dynamically;
    this subclass does the same (identical results in eager mode).
    """
    import_segment_anything()
    import torch.nn.functional as F
    from segment_anything.utils.onnx import SamOnnxModel

    class FixedSamOnnxModel(SamOnnxModel):
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            prepadded = self.resize_longest_image_size(orig_im_size, self.img_size).to(torch.int64)
            masks = masks[..., : prepadded[0], : prepadded[1]]
            size = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    return FixedSamOnnxModel(sam, return_single_mask=False).eval()


def export_decoder(sam: torch.nn.Module, path: Path) -> None:
    """As segment_anything's scripts/export_onnx_model.py (legacy tracing exporter, dynamic point count)."""
    grid = INPUT_SIZE // 16
    dummy = {
        "image_embeddings": torch.randn(1, EMBED_DIM, grid, grid),
        "point_coords": torch.randint(0, INPUT_SIZE, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * grid, 4 * grid),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoder_reference(sam), tuple(dummy.values()), str(path), dynamo=False, opset_version=OPSET,
            do_constant_folding=True, input_names=list(dummy), output_names=["masks", "iou_predictions",
                                                                             "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )


def export_tiny_segmenter(out: Path, seed: int = 0) -> torch.nn.Module:
    """Write encoder.onnx, decoder.onnx and segmenter.json into `out`; returns the torch SAM."""
    out.mkdir(parents=True, exist_ok=True)
    sam = build_tiny_sam(seed)
    export_encoder(sam, out / fmt.ENCODER_FILE)
    export_decoder(sam, out / fmt.DECODER_FILE)
    grid = INPUT_SIZE // 16
    meta = {
        "format": fmt.FORMAT, "family": "sam_vit_b", "input_size": INPUT_SIZE,
        "embedding_shape": [EMBED_DIM, grid, grid], "pixel_mean": list(PIXEL_MEAN), "pixel_std": list(PIXEL_STD),
        "source": "tests: tiny random SAM", "parity": {},
    }
    (out / fmt.METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return sam
