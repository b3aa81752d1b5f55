"""Read a SAM / MobileSAM checkpoint, tell its family and architecture from its keys and shapes, build the model.

The architecture is read from the tensors themselves (width, depth, heads, windows, input size), not assumed from
the family name, so fine-tuned checkpoints and scaled-down variants (the tests' tiny models) load the same way
as the published ones, and loading with strict=True then proves every key and shape matched.

Published checkpoints and what identifies them:
- SAM ViT (`sam_vit_b_01ec64.pth`, `sam_vit_l_0b3195.pth`, `sam_vit_h_4b8939.pth`): `image_encoder.blocks.*`, and
  `image_encoder.patch_embed.proj.weight` of width 768 / 1024 / 1280;
- MobileSAM (`mobile_sam.pt`): TinyViT keys, `image_encoder.patch_embed.seq.0.c.weight`,
  `image_encoder.layers.0.blocks.0.conv1.c.weight`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import DefectScopeError
from trainers.sam._segment_anything import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from trainers.sam.tiny_vit import MOBILE_SAM_VIT_T, TinyViT, TinyViTConfig

FAMILY_CHOICES = ("auto", "sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam_vit_t")
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's ImageNet statistics on 0..255 RGB; MobileSAM uses the same
PIXEL_STD = (58.395, 57.12, 57.375)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ViTConfig:
    """segment_anything.modeling.ImageEncoderViT's arguments (norm: LayerNorm eps 1e-6, abs + rel. positions)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    out_chans: int = 256


@dataclass(frozen=True)
class DecoderConfig:
    """PromptEncoder + MaskDecoder arguments; identical in every published SAM and MobileSAM."""

    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8  # not visible in any tensor shape: always SAM's 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


# segment_anything.build_sam's configurations (replicated: that module is reached only through the package
# __init__ we must not run, and here the input size can differ for tests).
OFFICIAL_VIT = {
    "sam_vit_b": ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "sam_vit_l": ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "sam_vit_h": ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
WIDTH_TO_FAMILY = {cfg.embed_dim: family for family, cfg in OFFICIAL_VIT.items()}

_VIT_KEY = "image_encoder.patch_embed.proj.weight"
_TINYVIT_KEY = "image_encoder.patch_embed.seq.0.c.weight"


@dataclass(frozen=True)
class SamArchitecture:
    family: str
    encoder: ViTConfig | TinyViTConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def input_size(self) -> int:
        return self.encoder.img_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        g = self.input_size // 16  # patch 16 (ViT) or 4 x 2 x 2 (TinyViT)
        return (self.decoder.prompt_embed_dim, g, g)

    def describe(self) -> dict[str, Any]:
        kind = "vit" if isinstance(self.encoder, ViTConfig) else "tiny_vit"
        return {"encoder": kind, **{k: _jsonable(v) for k, v in asdict(self.encoder).items()},
                "decoder": asdict(self.decoder)}


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def official_architecture(family: str, input_size: int = 1024) -> SamArchitecture:
    """The published architecture of `family` (input_size other than 1024: scaled tests and previews only)."""
    if family == "mobile_sam_vit_t":
        return SamArchitecture(family, TinyViTConfig(**{**asdict(MOBILE_SAM_VIT_T), "img_size": input_size}))
    if family not in OFFICIAL_VIT:
        raise ValueError(f"unknown SAM family '{family}'")
    return SamArchitecture(family, ViTConfig(**{**asdict(OFFICIAL_VIT[family]), "img_size": input_size}))


# ------------------------------------------------------------------------------------------------- reading
def read_state_dict(path: Path) -> StateDict:
    """The checkpoint's state dict (plain, or under 'model' / 'state_dict'; a DDP 'module.' prefix is removed)."""
    if not path.is_file():
        raise DefectScopeError(f"{path}: checkpoint file not found")
    try:
        # weights_only: a checkpoint is a user-supplied file, and full unpickling would run arbitrary code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DefectScopeError(
            f"{path}: not a readable PyTorch checkpoint of SAM or MobileSAM weights ({reason[:200]})"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise DefectScopeError(
            f"{path}: not a SAM or MobileSAM checkpoint: expected a state dict (parameter name -> tensor), "
            f"found {type(obj).__name__}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _not_sam(path: Path, sd: StateDict, why: str) -> DefectScopeError:
    sample = ", ".join(list(sd)[:4])
    return DefectScopeError(
        f"{path}: not a SAM or MobileSAM checkpoint ({why}). Expected the official key layout: "
        f"image_encoder.* (SAM ViT: {_VIT_KEY}; MobileSAM TinyViT: {_TINYVIT_KEY}), prompt_encoder.* and "
        f"mask_decoder.*; this file has {len(sd)} tensors such as {sample}"
    )


def encoder_kind(sd: StateDict) -> str | None:
    """'vit', 'tiny_vit' or None (neither)."""
    if _VIT_KEY in sd and "image_encoder.blocks.0.attn.qkv.weight" in sd:
        return "vit"
    if _TINYVIT_KEY in sd and "image_encoder.layers.0.blocks.0.conv1.c.weight" in sd:
        return "tiny_vit"
    return None


def detect_family(sd: StateDict, path: Path, requested: str = "auto") -> str:
    """The family of the checkpoint; `requested` (not 'auto') is checked against what the tensors say."""
    if requested not in FAMILY_CHOICES:
        raise DefectScopeError(f"unknown SAM family '{requested}'; known: {', '.join(FAMILY_CHOICES)}")
    kind = encoder_kind(sd)
    if kind is None:
        raise _not_sam(path, sd, "no SAM ViT or TinyViT image encoder")
    for part in ("prompt_encoder.", "mask_decoder."):
        if not any(k.startswith(part) for k in sd):
            raise _not_sam(path, sd, f"no {part}* tensors; an image-encoder-only file cannot be used")
    if kind == "tiny_vit":
        if requested not in ("auto", "mobile_sam_vit_t"):
            raise DefectScopeError(
                f"{path}: holds a MobileSAM (TinyViT) image encoder, not {requested}; use family "
                f"'mobile_sam_vit_t' or 'auto'"
            )
        return "mobile_sam_vit_t"
    width = int(sd[_VIT_KEY].shape[0])
    depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
    detected = WIDTH_TO_FAMILY.get(width)
    if requested == "auto":
        if detected is None:
            raise DefectScopeError(
                f"{path}: SAM ViT image encoder of width {width} and depth {depth} matches no published SAM "
                f"(sam_vit_b 768, sam_vit_l 1024, sam_vit_h 1280); name the family to convert a custom variant"
            )
        return detected
    if requested == "mobile_sam_vit_t":
        raise DefectScopeError(
            f"{path}: holds a SAM ViT image encoder (width {width}{f', {detected}' if detected else ''}), not "
            f"MobileSAM's TinyViT; use family '{detected or 'sam_vit_b / sam_vit_l / sam_vit_h'}'"
        )
    if detected is not None and detected != requested:
        raise DefectScopeError(
            f"{path}: is a {detected} checkpoint (image encoder width {width}), not {requested}; use family "
            f"'{detected}' or 'auto'"
        )
    return requested  # requested matches, or a custom width the user named explicitly


# --------------------------------------------------------------------------------------- architecture
def _count_indexed(sd: StateDict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    if found and found != set(range(max(found) + 1)):
        raise ValueError(f"{prefix}N indices are not contiguous: {sorted(found)}")
    return len(found)


def _shape(sd: StateDict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"missing tensor {key}")
    return tuple(sd[key].shape)


def _infer_vit(sd: StateDict) -> ViTConfig:
    p = "image_encoder."
    embed_dim, in_chans, patch, _ = _shape(sd, p + "patch_embed.proj.weight")
    if in_chans != 3:
        raise ValueError(f"patch embedding takes {in_chans} channels, SAM takes RGB (3)")
    _, grid, _, _ = _shape(sd, p + "pos_embed")
    depth = _count_indexed(sd, p + "blocks.")
    spans = []  # relative-position table length per block: 2 * (window or grid) - 1
    head_dims = set()
    for i in range(depth):
        length, head_dim = _shape(sd, f"{p}blocks.{i}.attn.rel_pos_h")
        spans.append((length + 1) // 2)
        head_dims.add(head_dim)
    if len(head_dims) != 1:
        raise ValueError(f"blocks disagree on the attention head width: {sorted(head_dims)}")
    head_dim = head_dims.pop()
    global_idx = tuple(i for i, s in enumerate(spans) if s == grid)
    windows = {s for s in spans if s != grid}
    if len(windows) > 1:
        raise ValueError(f"blocks disagree on the attention window: {sorted(windows)}")
    mlp_hidden = _shape(sd, f"{p}blocks.0.mlp.lin1.weight")[0]
    return ViTConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=global_idx,
        window_size=windows.pop() if windows else 14,
        img_size=grid * patch,
        patch_size=patch,
        mlp_ratio=mlp_hidden / embed_dim,
        qkv_bias=f"{p}blocks.0.attn.qkv.bias" in sd,
        out_chans=_shape(sd, p + "neck.0.weight")[0],
    )


def _infer_tiny_vit(sd: StateDict, img_size: int) -> TinyViTConfig:
    p = "image_encoder."
    n_layers = _count_indexed(sd, p + "layers.")
    if n_layers != 4:
        raise ValueError(f"TinyViT with {n_layers} stages; MobileSAM's has 4")
    dims = [_shape(sd, p + "patch_embed.seq.2.c.weight")[0]]
    depths, heads, windows = [], [0], [0]
    for i in range(4):
        depths.append(_count_indexed(sd, f"{p}layers.{i}.blocks."))
        if i > 0:
            dims.append(_shape(sd, f"{p}layers.{i}.blocks.0.attn.norm.weight")[0])
            n_heads, n_offsets = _shape(sd, f"{p}layers.{i}.blocks.0.attn.attention_biases")
            window = math.isqrt(n_offsets)
            if window * window != n_offsets:
                raise ValueError(f"stage {i}: attention bias table of {n_offsets} offsets is not a square window")
            heads.append(n_heads)
            windows.append(window)
    # Stage 0 has no attention: MobileSAM's unused values (2 heads, window 7) keep the config printable.
    heads[0], windows[0] = MOBILE_SAM_VIT_T.num_heads[0], MOBILE_SAM_VIT_T.window_sizes[0]
    head_key = p + "head.weight"
    return TinyViTConfig(
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_sizes=tuple(windows),
        img_size=img_size,
        mlp_ratio=_shape(sd, f"{p}layers.1.blocks.0.mlp.fc1.weight")[0] / dims[1],
        mbconv_expand_ratio=_shape(sd, f"{p}layers.0.blocks.0.conv1.c.weight")[0] / dims[0],
        local_conv_size=_shape(sd, f"{p}layers.1.blocks.0.local_conv.c.weight")[-1],
        num_classes=_shape(sd, head_key)[0] if head_key in sd else 0,
        out_chans=_shape(sd, p + "neck.0.weight")[0],
    )


def _infer_decoder(sd: StateDict) -> DecoderConfig:
    t = "mask_decoder.transformer."
    return DecoderConfig(
        prompt_embed_dim=_shape(sd, "prompt_encoder.no_mask_embed.weight")[1],
        mask_in_chans=_shape(sd, "prompt_encoder.mask_downscaling.3.weight")[0],
        transformer_depth=_count_indexed(sd, t + "layers."),
        transformer_mlp_dim=_shape(sd, t + "layers.0.mlp.lin1.weight")[0],
        num_multimask_outputs=_shape(sd, "mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count_indexed(sd, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=_shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )


def infer_architecture(sd: StateDict, family: str, path: Path, input_size: int | None = None) -> SamArchitecture:
    """The architecture the tensors describe. input_size: MobileSAM only (a TinyViT checkpoint does not record it;
    default 1024); a SAM ViT's is fixed by its position embedding."""
    try:
        if family == "mobile_sam_vit_t":
            encoder: ViTConfig | TinyViTConfig = _infer_tiny_vit(sd, input_size or MOBILE_SAM_VIT_T.img_size)
        else:
            encoder = _infer_vit(sd)
            if input_size is not None and input_size != encoder.img_size:
                raise ValueError(
                    f"its position embedding fixes the input size at {encoder.img_size}, not {input_size}")
        arch = SamArchitecture(family, encoder, _infer_decoder(sd))
    except ValueError as exc:
        raise DefectScopeError(f"{path}: unsupported {family} checkpoint: {exc}") from None
    if arch.encoder.out_chans != arch.decoder.prompt_embed_dim:
        raise DefectScopeError(
            f"{path}: image encoder outputs {arch.encoder.out_chans} channels but the prompt encoder expects "
            f"{arch.decoder.prompt_embed_dim}"
        )
    return arch


# ------------------------------------------------------------------------------------------------ building
def build_sam(arch: SamArchitecture) -> nn.Module:
    """A segment_anything `Sam` of this architecture, randomly initialised, in eval mode."""
    enc = arch.encoder
    if isinstance(enc, TinyViTConfig):
        image_encoder: nn.Module = TinyViT(enc)
    else:
        image_encoder = ImageEncoderViT(
            depth=enc.depth,
            embed_dim=enc.embed_dim,
            img_size=enc.img_size,
            mlp_ratio=enc.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=enc.num_heads,
            patch_size=enc.patch_size,
            qkv_bias=enc.qkv_bias,
            use_rel_pos=True,
            global_attn_indexes=enc.global_attn_indexes,
            window_size=enc.window_size,
            out_chans=enc.out_chans,
        )
    dec = arch.decoder
    grid = arch.embedding_shape[1]
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.input_size, arch.input_size),
            mask_in_chans=dec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=dec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=dec.transformer_depth,
                embedding_dim=dec.prompt_embed_dim,
                mlp_dim=dec.transformer_mlp_dim,
                num_heads=dec.transformer_heads,
            ),
            transformer_dim=dec.prompt_embed_dim,
            iou_head_depth=dec.iou_head_depth,
            iou_head_hidden_dim=dec.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def load_sam(path: Path, family: str = "auto", input_size: int | None = None) -> tuple[nn.Module, SamArchitecture]:
    """Read, identify and load a checkpoint: (Sam in eval mode, its architecture)."""
    sd = read_state_dict(path)
    family = detect_family(sd, path, family)
    arch = infer_architecture(sd, family, path, input_size)
    sam = build_sam(arch)
    try:
        sam.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise DefectScopeError(f"{path}: does not match the {family} architecture: {detail}") from None
    return sam, arch
