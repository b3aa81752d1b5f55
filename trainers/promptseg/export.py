"""Export to the segmenter format (engine.runtime.segmenter_format): encoder.onnx, decoder.onnx, segmenter.json.

encoder.onnx = in-graph preprocessing (uint8 H x W x 3 -> resize longest side to input_size, bilinear and
antialiased -> (x - mean) / std -> zero-pad bottom/right to input_size^2) + trunk + neck. The same preprocessing
graph feeds the trunk during training (the cached taps), so training sees exactly the pixels inference sees.
decoder.onnx = SamOnnxModel(model, return_single_mask=False) with a dynamic output crop (see
model.exportable_decoder). Both are parity-checked against torch before anything is written.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from engine.runtime import segmenter_format as fmt
from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD
from trainers.common.io import atomic_write
from trainers.common.onnx_export import (
    cpu_session,
    image_input,
    preprocess_nodes,
    rewired_nodes,
    trace_to_onnx,
)
from trainers.common.onnx_graph import IMAGE_INPUT, IR_VERSION, OPSET
from trainers.promptseg.model import ArchConfig, TrunkTaps, decode_batch, exportable_decoder, trainable_state

EMBEDDINGS = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
TAP_OUTPUTS = ("tap8", "tap16", "tap32")
STATE_FILE = "torch_state.pt"  # neck, prompt encoder, decoder: to rebuild the torch model (parity, fine-tuning)
FAMILY = "defectscope_effnet"
# Float32 graphs of the same ops in a different order: differences of a few 1e-5 on O(10) logits are rounding.
PARITY_TOLERANCE = 1e-3



def preprocess_model(size: int) -> onnx.ModelProto:
    """The preprocessing alone: image -> 1 x 3 x size x size (what the torch model's input is)."""
    nodes, inits = preprocess_nodes(size, "x")
    graph = helper.make_graph(
        nodes, "defectscope_promptseg_preprocess", [image_input()],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _with_preprocess(core: onnx.ModelProto, size: int, core_input: str, name: str) -> onnx.ModelProto:
    """Prepend the preprocessing to a core graph whose input is `core_input` (1 x 3 x size x size)."""
    pre_out = "pre_output"
    pre_nodes, pre_inits = preprocess_nodes(size, pre_out)
    nodes = rewired_nodes(core, core_input, pre_out)
    graph = helper.make_graph(
        pre_nodes + nodes, name, [image_input()], list(core.graph.output),
        initializer=list(core.graph.initializer) + pre_inits,
    )
    opsets = [op for op in core.opset_import if op.domain not in ("", "ai.onnx")]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), *opsets], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def trunk_taps_model(sam: Any, size: int) -> onnx.ModelProto:
    """image -> the frozen trunk's three taps (for caching training features with ONNX Runtime)."""
    core = trace_to_onnx(TrunkTaps(sam.image_encoder.trunk).eval(), (torch.zeros(1, 3, size, size),), ["x"],
                         list(TAP_OUTPUTS))
    return _with_preprocess(core, size, "x", "defectscope_promptseg_taps")


def encoder_model(sam: Any, size: int) -> onnx.ModelProto:
    core = trace_to_onnx(sam.image_encoder.eval(), (torch.zeros(1, 3, size, size),), ["x"], [EMBEDDINGS])
    return _with_preprocess(core, size, "x", "defectscope_promptseg_encoder")


def decoder_model(sam: Any, arch: ArchConfig) -> onnx.ModelProto:
    example = _decoder_example(arch, n_points=3, rng=np.random.default_rng(0), orig=(300, 450))
    model = trace_to_onnx(
        exportable_decoder(sam).eval(), tuple(torch.from_numpy(example[k]) for k in DECODER_INPUTS),
        list(DECODER_INPUTS), list(DECODER_OUTPUTS),
        {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
         "masks": {2: "H", 3: "W"}},
    )
    onnx.checker.check_model(model)
    return model


def _decoder_example(arch: ArchConfig, n_points: int, rng: np.random.Generator, orig: tuple[int, int],
                     embeddings: np.ndarray | None = None) -> dict[str, np.ndarray]:
    e, s = arch.embedding_size, arch.input_size
    scale = s / max(orig)
    coords = rng.uniform(0, 1, (1, n_points, 2)) * np.array([orig[1], orig[0]]) * scale
    labels = np.concatenate([[2, 3], rng.integers(0, 2, n_points - 2)])[None] if n_points >= 2 else np.array([[1]])
    return {
        "image_embeddings": (embeddings if embeddings is not None
                             else rng.standard_normal((1, arch.embed_dim, e, e))).astype(np.float32),
        "point_coords": coords.astype(np.float32),
        "point_labels": labels.astype(np.float32),
        "mask_input": rng.standard_normal((1, 1, 4 * e, 4 * e)).astype(np.float32),
        "has_mask_input": np.array([float(n_points % 2)], np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }


# ------------------------------------------------------------------------------------------------------ parity
def encoder_parity(sam: Any, encoder: bytes, size: int, images: list[np.ndarray]) -> float:
    """Max |embedding_onnx - embedding_torch| over `images` (torch fed by the same preprocessing graph)."""
    enc = cpu_session(encoder)
    pre = cpu_session(preprocess_model(size))
    worst = 0.0
    for img in images:
        (onnx_emb,) = enc.run([EMBEDDINGS], {IMAGE_INPUT: img})
        with torch.no_grad():
            torch_emb = sam.image_encoder(torch.from_numpy(pre.run(None, {IMAGE_INPUT: img})[0])).numpy()
        worst = max(worst, float(np.abs(onnx_emb - torch_emb).max()))
    return worst


def decoder_parity(sam: Any, decoder: bytes, arch: ArchConfig, embeddings: list[np.ndarray]) -> dict[str, float]:
    """Max differences between decoder.onnx, the torch SamOnnxModel and the batched training path.

    Prompt sets vary the number of points, the box, mask input on/off and the original image size (aspect
    ratios on both sides of square), so a crop or padding bug shows up here rather than in a user's mask.
    """
    sess = cpu_session(decoder)
    wrapper = exportable_decoder(sam).eval()
    base_forward = type(wrapper).__mro__[1].forward  # segment_anything's own SamOnnxModel.forward
    rng = np.random.default_rng(1)
    worst = {"masks": 0.0, "iou_predictions": 0.0, "low_res_masks": 0.0, "training_path_low_res": 0.0,
             "original_crop_masks": 0.0}
    cases = [(1, (300, 450)), (3, (512, 380)), (5, (1024, 700)), (2, (37, 900))]
    for emb in embeddings:
        for n, orig in cases:
            ex = _decoder_example(arch, n, rng, orig, emb)
            got = dict(zip(DECODER_OUTPUTS, sess.run(list(DECODER_OUTPUTS), ex), strict=True))
            t = {k: torch.from_numpy(v) for k, v in ex.items()}
            with torch.no_grad():
                ref = dict(zip(DECODER_OUTPUTS, (x.numpy() for x in wrapper(**t)), strict=True))
                orig_masks = base_forward(wrapper, **t)[0].numpy()
                low, _ = decode_batch(wrapper, t["image_embeddings"], t["point_coords"], t["point_labels"],
                                      t["mask_input"], t["has_mask_input"])
            for k in DECODER_OUTPUTS:
                worst[k] = max(worst[k], float(np.abs(got[k] - ref[k]).max()))
            worst["training_path_low_res"] = max(worst["training_path_low_res"],
                                                 float(np.abs(low.numpy() - got["low_res_masks"]).max()))
            worst["original_crop_masks"] = max(worst["original_crop_masks"],
                                               float(np.abs(orig_masks - got["masks"]).max()))
    return worst


# ------------------------------------------------------------------------------------------------------ writing
def export_segmenter(sam: Any, arch: ArchConfig, out_dir: Path, metadata: dict[str, Any],
                     parity_images: list[np.ndarray]) -> dict[str, Any]:
    """Write encoder.onnx, decoder.onnx, segmenter.json and the torch state into out_dir; returns the metadata.

    Parity is checked first (real images when given): a graph that disagrees with torch is never written.
    """
    sam = sam.eval()
    encoder = encoder_model(sam, arch.input_size).SerializeToString()
    decoder = decoder_model(sam, arch).SerializeToString()
    if not parity_images:
        parity_images = [np.random.default_rng(0).integers(0, 255, (arch.input_size, arch.input_size, 3), np.uint8)]
    enc_diff = encoder_parity(sam, encoder, arch.input_size, parity_images)
    enc_sess = cpu_session(encoder)
    embeddings = [enc_sess.run([EMBEDDINGS], {IMAGE_INPUT: img})[0] for img in parity_images[:2]]
    dec_diff = decoder_parity(sam, decoder, arch, embeddings)
    worst = max(enc_diff, *dec_diff.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"exported ONNX disagrees with the torch model: encoder {enc_diff:.2e}, decoder {dec_diff}")
    e = arch.embedding_size
    meta = {
        "format": fmt.FORMAT,
        "family": FAMILY,
        "input_size": arch.input_size,
        "embedding_shape": [arch.embed_dim, e, e],
        "pixel_mean": [PIXEL_MEAN] * 3,
        "pixel_std": [PIXEL_STD] * 3,
        "mask_threshold": 0.0,
        "num_mask_outputs": fmt.NUM_MASK_OUTPUTS,
        "source": "trained by DefectScope (trainers.promptseg): frozen ImageNet EfficientNet-Lite trunk, "
                  "trained neck and SAM prompt encoder / mask decoder",
        "architecture": {
            "backbone": arch.backbone, "taps": [2, 4, 6], "embed_dim": arch.embed_dim,
            "decoder_depth": arch.decoder_depth, "decoder_mlp_dim": arch.decoder_mlp_dim,
            "decoder_heads": arch.decoder_heads, "neck_blocks": arch.neck_blocks,
        },
        "parity": {
            "encoder_max_abs_diff": enc_diff,
            **{f"decoder_{k}_max_abs_diff": v for k, v in dec_diff.items()},
            "tolerance": PARITY_TOLERANCE,
            "n_images": len(parity_images),
        },
        "export": {"opset": OPSET, "ir_version": IR_VERSION, "torch_version": torch.__version__},
        **metadata,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(trainable_state(sam), buffer)
    atomic_write(out_dir / STATE_FILE, buffer.getvalue())
    atomic_write(out_dir / fmt.ENCODER_FILE, encoder)
    atomic_write(out_dir / fmt.DECODER_FILE, decoder)
    # The metadata last: a folder with segmenter.json is complete (a crash before leaves no loadable model).
    atomic_write(out_dir / fmt.METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta


def load_torch_model(run_dir: str | Path) -> tuple[Any, ArchConfig]:
    """Rebuild the torch model of an exported run (trunk from the pip weights, the rest from STATE_FILE)."""
    from trainers.promptseg.model import build_sam

    run = Path(run_dir)
    meta = json.loads((run / fmt.METADATA_FILE).read_text())
    a = meta["architecture"]
    arch = ArchConfig(
        input_size=meta["input_size"], backbone=a["backbone"], embed_dim=a["embed_dim"],
        decoder_depth=a["decoder_depth"], decoder_mlp_dim=a["decoder_mlp_dim"], decoder_heads=a["decoder_heads"],
        neck_blocks=a["neck_blocks"],
    )
    sam = build_sam(arch)
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    sam.load_state_dict({**sam.state_dict(), **state})
    return sam.eval(), arch
