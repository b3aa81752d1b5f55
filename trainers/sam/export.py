"""Export a loaded SAM / MobileSAM to the promptable-segmenter ONNX pair, and check it against torch.

encoder.onnx = [pre-processing as ONNX nodes] + [the torch image encoder, exported by the dynamo exporter at a
fixed input_size x input_size]. The pre-processing reproduces SAM's: resize so the longest side is input_size
(bilinear, antialiased when shrinking, like the PIL resize SamPredictor uses), normalise with the pixel mean/std,
pad bottom/right with zeros. Its target size is computed in the graph with the same float32 operations as
SamOnnxModel.resize_longest_image_size, so the decoder crops exactly the region the encoder filled.

decoder.onnx = segment_anything.utils.onnx.SamOnnxModel(return_single_mask=False) with a dynamic point count.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from engine.runtime import segmenter_format as fmt
from engine.runtime.session import create_session
from trainers.common.onnx_graph import IR_VERSION, OPSET
from trainers.sam._segment_anything import Sam, SamOnnxModel
from trainers.sam.checkpoint import PIXEL_MEAN, PIXEL_STD, SamArchitecture

IMAGE_INPUT = "image"
EMBEDDINGS = "image_embeddings"
CORE_INPUT = "x"
PADDED = "pre_padded"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
# Protobuf cannot serialise a message over 2 GiB: larger encoders (SAM ViT-H, 2.5 GB) keep their weights in
# encoder.onnx.data beside encoder.onnx (ONNX Runtime reads it when the model is opened by path).
EXTERNAL_DATA_LIMIT = 1_800_000_000
EMBEDDING_TOLERANCE = 1e-3  # max |torch - ONNX| of the image embeddings
MASK_DISAGREEMENT_TOLERANCE = 0.005  # share of mask pixels (logit > 0) on which torch and ONNX disagree


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The exporters log graph dumps and deprecation notes that mean nothing to a user importing a model."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch.fx.experimental.symbolic_shapes",
                                              "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------- encoder
def preprocess_nodes(input_size: int, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes from IMAGE_INPUT (H x W x 3 uint8) to `out` (1 x 3 x S x S float, normalised and zero-padded)."""
    s = input_size
    nodes = [
        helper.make_node("Cast", [IMAGE_INPUT], ["pre_f"], to=TensorProto.FLOAT, name="pre_cast"),
        helper.make_node("Transpose", ["pre_f"], ["pre_chw"], perm=[2, 0, 1], name="pre_transpose"),
        helper.make_node("Unsqueeze", ["pre_chw", "pre_axis0"], ["pre_nchw"], name="pre_unsqueeze"),
        # (h, w) = floor([H, W] * (S / max(H, W)) + 0.5) in float32, as SamOnnxModel.resize_longest_image_size;
        # S / max is computed as (1 / max) * S because that is what torch (eager and exported) does for
        # `scalar / tensor`, so the rounding matches the decoder's crop even in the 1-ulp cases.
        helper.make_node("Shape", [IMAGE_INPUT], ["pre_hw_i"], start=0, end=2, name="pre_shape"),
        helper.make_node("Cast", ["pre_hw_i"], ["pre_hw"], to=TensorProto.FLOAT, name="pre_hw_cast"),
        helper.make_node("ReduceMax", ["pre_hw"], ["pre_long"], keepdims=1, name="pre_long"),
        helper.make_node("Reciprocal", ["pre_long"], ["pre_inv_long"], name="pre_inv_long"),
        helper.make_node("Mul", ["pre_inv_long", "pre_side"], ["pre_scale"], name="pre_scale"),
        helper.make_node("Mul", ["pre_scale", "pre_hw"], ["pre_hw_scaled"], name="pre_hw_scaled"),
        helper.make_node("Add", ["pre_hw_scaled", "pre_half"], ["pre_hw_half"], name="pre_hw_half"),
        helper.make_node("Floor", ["pre_hw_half"], ["pre_hw_new_f"], name="pre_hw_floor"),
        helper.make_node("Cast", ["pre_hw_new_f"], ["pre_hw_new"], to=TensorProto.INT64, name="pre_hw_new"),
        # exclude_outside=1 renormalises the antialias filter at the borders, as torch and PIL do; without it ONNX
        # Runtime blends in clamped edge pixels and the border rows differ by up to ~10 grey levels.
        helper.make_node("Resize", ["pre_nchw", "", "", "pre_hw_new"], ["pre_resized"], mode="linear", antialias=1,
                         exclude_outside=1, axes=[2, 3], name="pre_resize"),
        helper.make_node("Sub", ["pre_resized", "pre_mean"], ["pre_centered"], name="pre_sub_mean"),
        helper.make_node("Div", ["pre_centered", "pre_std"], ["pre_norm"], name="pre_div_std"),
        # pads = [0, 0, 0, 0, 0, 0, S - h, S - w]: zeros after normalisation, bottom and right, as Sam.preprocess
        helper.make_node("Sub", ["pre_side_i", "pre_hw_new"], ["pre_pad_hw"], name="pre_pad_hw"),
        helper.make_node("Concat", ["pre_zeros6", "pre_pad_hw"], ["pre_pads"], axis=0, name="pre_pads"),
        helper.make_node("Pad", ["pre_norm", "pre_pads"], [out], mode="constant", name="pre_pad"),
    ]
    inits = [
        helper.make_tensor("pre_axis0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("pre_side", TensorProto.FLOAT, [1], [float(s)]),
        helper.make_tensor("pre_half", TensorProto.FLOAT, [1], [0.5]),
        helper.make_tensor("pre_mean", TensorProto.FLOAT, [1, 3, 1, 1], list(PIXEL_MEAN)),
        helper.make_tensor("pre_std", TensorProto.FLOAT, [1, 3, 1, 1], list(PIXEL_STD)),
        helper.make_tensor("pre_side_i", TensorProto.INT64, [2], [s, s]),
        helper.make_tensor("pre_zeros6", TensorProto.INT64, [6], [0] * 6),
    ]
    return nodes, inits


def resized_size(h: int, w: int, input_size: int) -> tuple[int, int]:
    """(h, w) inside the padded input, rounded exactly as the graphs do (float32)."""
    scale = (np.float32(1) / np.float32(max(h, w))) * np.float32(input_size)
    nh, nw = (int(np.floor(scale * np.float32(v) + np.float32(0.5))) for v in (h, w))
    return nh, nw


def preprocess_torch(image: np.ndarray, input_size: int) -> torch.Tensor:
    """The torch twin of `preprocess_nodes`: H x W x 3 uint8 -> 1 x 3 x S x S float."""
    nh, nw = resized_size(image.shape[0], image.shape[1], input_size)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, input_size - nw, 0, input_size - nh))


def export_encoder(image_encoder: nn.Module, arch: SamArchitecture, path: Path,
                   external_data_limit: int = EXTERNAL_DATA_LIMIT) -> str | None:
    """Write the encoder graph to `path`; returns the external-data file name when the weights live beside it."""
    s = arch.input_size
    work = path.parent / f".{path.stem}_core"
    work.mkdir()
    try:
        core_path = work / "core.onnx"
        # Exported with its weights outside the proto, so even ViT-H (2.5 GB) never builds a >2 GiB message.
        with _quiet_export():
            torch.onnx.export(
                image_encoder, (torch.zeros(1, 3, s, s),), str(core_path), dynamo=True,
                input_names=[CORE_INPUT], output_names=[EMBEDDINGS], opset_version=OPSET, external_data=True,
                verbose=False,
            )
        model = onnx.load(str(core_path), load_external_data=False)
        _prepend_preprocessing(model, arch)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        data_bytes = sum((work / loc).stat().st_size for loc in locations)
        if data_bytes <= external_data_limit:
            onnx.load_external_data_for_model(model, str(work))
            path.write_bytes(model.SerializeToString())
            data_name = None
        else:
            if len(locations) != 1:
                raise RuntimeError(f"encoder export wrote {len(locations)} weight files; expected one")
            data_name = f"{path.name}.data"
            for t in model.graph.initializer:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = data_name
            shutil.move(str(work / locations.pop()), str(path.parent / data_name))
            path.write_bytes(model.SerializeToString())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    onnx.checker.check_model(str(path))  # by path: also checks external data
    return data_name


def _prepend_preprocessing(model: onnx.ModelProto, arch: SamArchitecture) -> None:
    """In place: image (uint8 H x W x 3) -> pre-processing -> the core graph (whose input was CORE_INPUT)."""
    graph = model.graph
    pre_nodes, pre_inits = preprocess_nodes(arch.input_size, PADDED)
    core_nodes = list(graph.node)
    for node in core_nodes:
        node.input[:] = [PADDED if name == CORE_INPUT else name for name in node.input]
    del graph.node[:]
    graph.node.extend(pre_nodes + core_nodes)
    graph.initializer.extend(pre_inits)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["H", "W", 3]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(EMBEDDINGS, TensorProto.FLOAT, [1, *arch.embedding_shape]))
    graph.name = f"defectscope_{arch.family}_encoder"
    _set_versions(model)


def _set_versions(model: onnx.ModelProto) -> None:
    """Opset 18 / IR 9, the repo's export target (readable by every ONNX Runtime from 1.16 on)."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version != OPSET:
            raise RuntimeError(f"exporter produced opset {op.version}, expected {OPSET}")
    model.ir_version = IR_VERSION


# ---------------------------------------------------------------------------------------------- decoder
class _InputSize(nn.Module):
    """Stands in for the image encoder when exporting the decoder: SamOnnxModel only reads its img_size."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size


def decoder_model(sam: nn.Module) -> nn.Module:
    """SamOnnxModel on the prompt encoder and mask decoder only (the image encoder's weights stay out of the
    decoder export: with ViT-H they would be 2.5 GB of unused graph inputs)."""
    slim = Sam(
        image_encoder=_InputSize(sam.image_encoder.img_size),
        prompt_encoder=sam.prompt_encoder,
        mask_decoder=sam.mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return SamOnnxModel(slim, return_single_mask=False).eval()


def export_decoder(sam: nn.Module, arch: SamArchitecture, path: Path) -> None:
    """Dummy inputs and dynamic point count as segment_anything's scripts/export_onnx_model.py.

    Not that script's legacy tracing exporter: tracing turns the crop to the resized image size
    (`int(prepadded_size[0])` in SamOnnxModel.mask_postprocessing) into a constant taken from the dummy
    orig_im_size, so masks come out wrong for every other aspect ratio. torch.export keeps that crop as a
    data-dependent size, but only in strict mode (non-strict cannot turn the int() into a symbol), so the program is
    captured with strict=True here rather than by torch.onnx.export's non-strict first attempt.
    """
    c, h, w = arch.embedding_shape
    s = arch.input_size
    gen = torch.Generator().manual_seed(0)
    dummy = {
        "image_embeddings": torch.randn(1, c, h, w, generator=gen),
        "point_coords": torch.randint(0, s, (1, 5, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (1, 5), generator=gen).float(),
        "mask_input": torch.randn(1, 1, 4 * h, 4 * w, generator=gen),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }
    points = torch.export.Dim("num_points", min=1)
    dynamic: dict[str, Any] = {name: None for name in dummy}
    dynamic["point_coords"] = {1: points}
    dynamic["point_labels"] = {1: points}
    with _quiet_export():
        program = torch.export.export(decoder_model(sam), tuple(dummy.values()), dynamic_shapes=dynamic, strict=True)
        onnx_program = torch.onnx.export(
            program, tuple(dummy.values()), dynamo=True, input_names=list(DECODER_INPUTS),
            output_names=list(DECODER_OUTPUTS), opset_version=OPSET, external_data=False, verbose=False,
        )
    model = onnx_program.model_proto
    _name_dims(model, {"point_coords": [1, "num_points", 2], "point_labels": [1, "num_points"],
                       "masks": [1, fmt.NUM_MASK_OUTPUTS, "H", "W"]})
    _set_versions(model)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _name_dims(model: onnx.ModelProto, shapes: dict[str, list[int | str]]) -> None:
    """Readable symbolic dimensions on graph inputs/outputs (the exporter names them s0, u22...)."""
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for dim, value in zip(dims, shapes[vi.name], strict=True):
                if isinstance(value, str):
                    dim.dim_param = value
                else:
                    dim.dim_value = value


# ----------------------------------------------------------------------------------------------- parity
@dataclass(frozen=True)
class Prompt:
    name: str
    coords: np.ndarray  # 1 x N x 2, original image pixels
    labels: np.ndarray  # 1 x N


def parity_image(input_size: int, seed: int = 0) -> np.ndarray:
    """A deterministic test picture: a lit background, a few solid parts, mild noise.

    Landscape, 1.5x input_size on its long side, so the check covers the antialiased downscale and the padding.
    """
    w = int(input_size * 1.5)
    h = int(w * 0.75)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([60 + 80 * xx / w, 70 + 60 * yy / h, 90 + 40 * (xx + yy) / (w + h)], axis=-1)
    img[(xx - 0.3 * w) ** 2 + (yy - 0.45 * h) ** 2 < (0.15 * h) ** 2] = (200, 60, 50)  # a disc
    img[int(0.55 * h):int(0.85 * h), int(0.55 * w):int(0.9 * w)] = (40, 160, 210)  # a plate
    img[int(0.1 * h):int(0.2 * h), int(0.5 * w):int(0.95 * w)] = (230, 220, 90)  # a bar
    img += np.random.default_rng(seed).normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def parity_prompts(h: int, w: int) -> list[Prompt]:
    """A click (with SAM's padding point), a box, and a click plus a box, on the parts of `parity_image`."""
    click = [0.3 * w, 0.45 * h]
    box = [0.55 * w, 0.55 * h, 0.9 * w, 0.85 * h]
    inside = [0.7 * w, 0.7 * h]

    def p(name: str, coords: list[list[float]], labels: list[float]) -> Prompt:
        return Prompt(name, np.array([coords], np.float32), np.array([labels], np.float32))

    return [
        p("point", [click, [0.0, 0.0]], [1, -1]),
        p("box", [box[:2], box[2:]], [2, 3]),
        p("point+box", [inside, box[:2], box[2:]], [1, 2, 3]),
    ]


def _decoder_feed(emb: np.ndarray, prompt: Prompt, scale: np.float32, mask_input: np.ndarray,
                  has_mask: float, hw: tuple[int, int]) -> dict[str, np.ndarray]:
    return {
        "image_embeddings": emb,
        "point_coords": (prompt.coords * scale).astype(np.float32),  # to the resized frame (see the format)
        "point_labels": prompt.labels,
        "mask_input": mask_input.astype(np.float32),
        "has_mask_input": np.array([has_mask], np.float32),
        "orig_im_size": np.array(hw, np.float32),
    }


def check_parity(sam: nn.Module, arch: SamArchitecture, encoder_path: Path, decoder_path: Path,
                 image: np.ndarray | None = None) -> dict[str, Any]:
    """torch (the same pre-processing in torch, then the encoder; stock SamOnnxModel) vs ONNX Runtime.

    Each side runs its own chain end to end (image -> embeddings -> masks), so the mask figures include whatever the
    encoder's differences do to the masks. Runs on the CPU provider with full graph optimisation, as inspection.
    """
    image = parity_image(arch.input_size) if image is None else image
    h, w = image.shape[:2]
    encoder, enc_provider = create_session(encoder_path, device="cpu")
    decoder, _ = create_session(decoder_path, device="cpu")
    reference = SamOnnxModel(sam, return_single_mask=False).eval()
    with torch.inference_mode():
        emb_torch = sam.image_encoder(preprocess_torch(image, arch.input_size)).numpy()
    (emb_onnx,) = encoder.run([EMBEDDINGS], {IMAGE_INPUT: image})
    scale = np.float32(arch.input_size) / np.float32(max(h, w))
    _, eh, ew = arch.embedding_shape

    def compare(prompt: Prompt, mask_input: np.ndarray, has_mask: float) -> tuple[dict[str, float], np.ndarray]:
        feed_t = _decoder_feed(emb_torch, prompt, scale, mask_input, has_mask, (h, w))
        feed_o = _decoder_feed(emb_onnx, prompt, scale, mask_input, has_mask, (h, w))
        with torch.inference_mode():
            out_t = reference(**{k: torch.from_numpy(v) for k, v in feed_t.items()})
        masks_t, iou_t, low_t = (t.numpy() for t in out_t)
        masks_o, iou_o, low_o = decoder.run(list(DECODER_OUTPUTS), feed_o)
        if masks_o.shape != masks_t.shape or masks_o.shape[1] != fmt.NUM_MASK_OUTPUTS:
            raise RuntimeError(f"decoder output shape {masks_o.shape}, torch {masks_t.shape}")
        figures = {
            "mask_logits_max_abs_diff": float(np.abs(masks_t - masks_o).max()),
            "mask_disagreement": float(np.mean((masks_t > 0) != (masks_o > 0))),
            "iou_max_abs_diff": float(np.abs(iou_t - iou_o).max()),
            "low_res_max_abs_diff": float(np.abs(low_t - low_o).max()),
            "mask_area": float(np.mean(masks_t > 0)),
        }
        best = int(np.argmax(iou_t[0]))
        return figures, low_t[:, best:best + 1]

    no_mask = np.zeros((1, 1, 4 * eh, 4 * ew), np.float32)
    prompts = parity_prompts(h, w)
    results = {p.name: compare(p, no_mask, 0.0) for p in prompts}
    report = {name: figures for name, (figures, _) in results.items()}
    # The click again, refining its own best low-res mask: covers the mask_input path.
    click = prompts[0]
    report["point+mask"], _ = compare(Prompt("point+mask", click.coords, click.labels), results[click.name][1], 1.0)
    return {
        "image_size": [h, w],
        "embeddings_max_abs_diff": float(np.abs(emb_torch - emb_onnx).max()),
        "embeddings_abs_max": float(np.abs(emb_torch).max()),
        "mask_logits_max_abs_diff": max(r["mask_logits_max_abs_diff"] for r in report.values()),
        "mask_disagreement": max(r["mask_disagreement"] for r in report.values()),
        "prompts": report,
        "tolerance": {"embeddings_max_abs_diff": EMBEDDING_TOLERANCE, "mask_disagreement": MASK_DISAGREEMENT_TOLERANCE},
        "provider": enc_provider,
    }


def parity_failures(parity: dict[str, Any]) -> list[str]:
    """Human-readable reasons the export is rejected (empty when it passes). NaN never passes."""
    problems = []
    emb = parity["embeddings_max_abs_diff"]
    if not emb <= EMBEDDING_TOLERANCE:
        problems.append(f"image embeddings differ by up to {emb:.3g} (limit {EMBEDDING_TOLERANCE:g})")
    for name, r in parity["prompts"].items():
        share = r["mask_disagreement"]
        if not share <= MASK_DISAGREEMENT_TOLERANCE:
            problems.append(f"'{name}' masks disagree on {share:.2%} of pixels "
                            f"(limit {MASK_DISAGREEMENT_TOLERANCE:.1%})")
        if not np.isfinite(r["mask_logits_max_abs_diff"]):
            problems.append(f"'{name}' mask logits are not finite")
    return problems
