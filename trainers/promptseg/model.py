"""DefectScope's promptable defect segmenter: EfficientNet-Lite image encoder + SAM's prompt encoder and decoder.

The image encoder is a frozen ImageNet EfficientNet-Lite trunk and a small trainable neck that projects its
features to SAM's embedding layout (C x input_size/16 x input_size/16). The neck sees three taps:
stride 8 (folded into channels with pixel-unshuffle, so fine edges survive the stride-16 embedding), stride 16,
and stride 32 (upsampled; context). Prompt encoder and mask decoder are segment_anything's own classes,
randomly initialised (no SAM weights exist offline), so decoder.onnx is exactly SAM's decoder interface.

Training runs the trunk once per image (its outputs are cached) and trains neck, prompt encoder and decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteFeatures
from trainers.sam import _segment_anything as sa

# Trunk taps (0-based EfficientNet stages) at strides 8, 16, 32.
TAPS = (2, 4, 6)
EMBEDDING_STRIDE = 16
MASK_IN_CHANS = 16  # SAM's value for the mask-input downscaler


@dataclass(frozen=True)
class ArchConfig:
    """What the exported graphs depend on; stored in segmenter.json so a run can be rebuilt."""

    input_size: int = 512
    backbone: str = "efficientnet-lite0"
    embed_dim: int = 128
    decoder_depth: int = 2
    decoder_mlp_dim: int = 1024
    decoder_heads: int = 8
    neck_blocks: int = 1

    @property
    def embedding_size(self) -> int:
        return self.input_size // EMBEDDING_STRIDE


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of NCHW maps (SAM's LayerNorm2d, restated so the neck has no segment_anything import)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _NeckBlock(nn.Module):
    """Residual depthwise-separable block: cheap spatial mixing where the frozen trunk cannot adapt."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, 2 * dim, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))


class Neck(nn.Module):
    """Trunk taps (strides 8, 16, 32) -> embedding (embed_dim x s/16 x s/16), LayerNorm'd like SAM's neck."""

    def __init__(self, in_channels: tuple[int, int, int], embed_dim: int, blocks: int) -> None:
        super().__init__()
        c8, c16, c32 = in_channels
        self.proj = nn.Conv2d(4 * c8 + c16 + c32, embed_dim, 1)
        self.norm_in = LayerNorm2d(embed_dim)
        self.blocks = nn.Sequential(*[_NeckBlock(embed_dim) for _ in range(blocks)])
        self.out = nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False)
        self.norm_out = LayerNorm2d(embed_dim)

    def forward(self, f8: torch.Tensor, f16: torch.Tensor, f32: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            [F.pixel_unshuffle(f8, 2), f16, F.interpolate(f32, scale_factor=2.0, mode="bilinear", align_corners=False)],
            dim=1,
        )
        x = self.norm_in(self.proj(x))
        x = self.blocks(x)
        return self.norm_out(self.out(x))


class EffNetImageEncoder(nn.Module):
    """Normalised, padded 1 x 3 x S x S image -> embedding. `img_size` is what SamOnnxModel reads."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (got {arch.input_size})")
        self.img_size = arch.input_size
        self.trunk = EfficientNetLiteFeatures(arch.backbone, TAPS)
        self.neck = Neck(self.trunk.channels, arch.embed_dim, arch.neck_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(*self.trunk(x))

    def train(self, mode: bool = True) -> EffNetImageEncoder:
        super().train(mode)
        self.trunk.eval()  # frozen: BatchNorm statistics stay ImageNet's
        return self


class TrunkTaps(nn.Module):
    """The frozen trunk alone, for caching its taps during training (exported and run with ONNX Runtime)."""

    def __init__(self, trunk: EfficientNetLiteFeatures) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.trunk(x))


def build_sam(arch: ArchConfig) -> Any:
    """A segment_anything `Sam` with our encoder and freshly initialised prompt encoder / mask decoder."""
    e = arch.embedding_size
    prompt_encoder = sa.PromptEncoder(
        embed_dim=arch.embed_dim,
        image_embedding_size=(e, e),
        input_image_size=(arch.input_size, arch.input_size),
        mask_in_chans=MASK_IN_CHANS,
    )
    decoder = sa.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sa.TwoWayTransformer(
            depth=arch.decoder_depth, embedding_dim=arch.embed_dim, mlp_dim=arch.decoder_mlp_dim,
            num_heads=arch.decoder_heads,
        ),
        transformer_dim=arch.embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return sa.Sam(
        image_encoder=EffNetImageEncoder(arch),
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=[PIXEL_MEAN] * 3,
        pixel_std=[PIXEL_STD] * 3,
    )


def exportable_decoder(sam: Any) -> nn.Module:
    """SamOnnxModel(sam, return_single_mask=False) whose output crop follows orig_im_size in the exported graph.

    SamOnnxModel crops the padding off with `masks[..., :int(h), :int(w)]`; torch's ONNX tracer records those
    ints as constants of the example, so a graph exported at one image size crops every other aspect ratio
    wrongly (measured: 0.4 logit error at 1024 x 700 for a graph traced at 300 x 450). Gathering with
    arange(h) / arange(w) traces to Range + Gather, which follow the input. The values are identical (checked
    against the original method in the parity test).
    """
    class _SamOnnxDynamicCrop(sa.SamOnnxModel):  # type: ignore[misc]
        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            pre = self.resize_longest_image_size(orig_im_size, self.img_size)
            rows = torch.arange(pre[0], device=masks.device)
            cols = torch.arange(pre[1], device=masks.device)
            masks = masks.index_select(2, rows).index_select(3, cols)
            hw = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)

    return _SamOnnxDynamicCrop(sam, return_single_mask=False)


def decode_batch(
    onnx_model: nn.Module,
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor,
    has_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits (B x 4 x 4h x 4w) and IoU predictions (B x 4) for B images, one prompt set each.

    The training path: SamOnnxModel's own prompt embedding (the exact computation of decoder.onnx, labels
    -1 / 0 / 1 / 2 / 3 included) and MaskDecoder.predict_masks, minus predict_masks' repeat_interleave, which
    assumes one image shared by all prompt sets. coords: B x N x 2 in the model frame; labels: B x N;
    mask_input: B x 1 x 4h x 4w; has_mask: B.
    """
    sam = onnx_model.model
    dec = sam.mask_decoder
    sparse = onnx_model._embed_points(coords, labels)
    dense = onnx_model._embed_masks(mask_input, has_mask.view(-1, 1, 1, 1))
    b = embeddings.shape[0]
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
    src = embeddings + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = dec.transformer(src, pos, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
    _, c2, h2, w2 = upscaled.shape
    masks = (hyper @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)
    return masks, dec.iou_prediction_head(iou_token_out)


def trainable_state(sam: Any) -> dict[str, torch.Tensor]:
    """Everything but the frozen trunk (which is rebuilt from the pip weights)."""
    return {k: v for k, v in sam.state_dict().items() if not k.startswith("image_encoder.trunk.")}
