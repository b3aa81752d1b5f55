"""TinyViT, the image encoder of MobileSAM (vit_t), written without timm.

The module tree mirrors MobileSAM's `mobile_sam/modeling/tiny_vit_sam.py`, so its state-dict keys are exactly those
of a real `mobile_sam.pt` (`image_encoder.patch_embed.seq.0.c.weight`, `image_encoder.layers.1.blocks.0.attn.
attention_biases`, `image_encoder.norm_head.weight`, `image_encoder.neck.0.weight`, ...) and the checkpoint loads
with strict=True. Differences, none of which change the computation of an exported model:

- inference only: drop-path is the identity and gradient checkpointing / layer-wise lr decay are left out;
- the attention bias table is gathered in forward (MobileSAM caches it in `train(False)` as a plain attribute,
  which tracing would freeze); the values are identical;
- the last patch merging has stride 1 by position (MobileSAM decides by its output width being 320, 448 or 576,
  which is the same layer for every published TinyViT), so scaled-down test models stay consistent;
- the final reshape uses img_size // 16 rather than a hard-coded 64, so smaller input sizes work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.sam._segment_anything import LayerNorm2d


@dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    img_size: int = 1024
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000  # MobileSAM keeps TinyViT's unused ImageNet head; its weights are in the checkpoint
    out_chans: int = 256

    def __post_init__(self) -> None:
        if not len(self.embed_dims) == len(self.depths) == len(self.num_heads) == len(self.window_sizes) == 4:
            raise ValueError("TinyViT as used by MobileSAM has exactly four stages")
        if self.img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {self.img_size}")


# MobileSAM's vit_t: TinyViT-5M at 1024 px.
MOBILE_SAM_VIT_T = TinyViTConfig()


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm; children named 'c' and 'bn' as in the checkpoint."""

    def __init__(self, cin: int, cout: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(cout)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: img_size -> img_size / 4."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2, 1), nn.GELU(), ConvBN(embed_dim // 2, embed_dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise 3x3, project 1x1) on B x C x H x W."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(y + x)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 (stride 2, or 1 for the last merge), 1x1 conv; returns B x L x C tokens."""

    def __init__(self, resolution: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1, 1, 0)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens from an attention stage
            b = x.shape[0]
            x = x.view(b, self.resolution, self.resolution, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def attention_bias_index(window: int) -> torch.Tensor:
    """N x N (N = window**2) index into the per-offset bias table.

    MobileSAM numbers the offsets (|dy|, |dx|) in order of first appearance while looping over all point pairs in
    row-major order; the first point (0, 0) already meets every offset, in row-major order, so that numbering is
    simply |dy| * window + |dx| (checked against the loop in the tests).
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class Attention(nn.Module):
    """Multi-head self-attention with a learned bias per (|dy|, |dx|) offset within a window."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.key_dim = dim // num_heads  # attn_ratio 1: queries, keys and values all have key_dim per head
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", attention_bias_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1)
        q, k, v = (t.permute(0, 2, 1, 3) for t in qkv.split([self.key_dim] * 3, dim=3))
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise conv between attention and MLP, then the MLP (tokens B x L x C)."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        r, w = self.resolution, self.window
        if r == w:
            return self.attn(x)
        x = x.view(b, r, r, c)
        pad = (w - r % w) % w  # pad bottom/right so windows tile the map, crop afterwards
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))
        p = r + pad
        n = p // w
        x = x.view(b, n, w, n, w, c).transpose(2, 3).reshape(b * n * n, w * w, c)
        x = self.attn(x)
        x = x.view(b, n, n, w, w, c).transpose(2, 3).reshape(b, p, p, c)
        if pad:
            x = x[:, :r, :r].contiguous()
        return x.view(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        x = x + self._window_attention(x)
        x = x.transpose(1, 2).reshape(b, c, self.resolution, self.resolution)
        x = self.local_conv(x).view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then a patch merging."""

    def __init__(self, dim: int, resolution: int, depth: int, expand_ratio: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([MBConv(dim, expand_ratio) for _ in range(depth)])
        self.downsample = PatchMerging(resolution, dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1-3: TinyViT blocks, then a patch merging except after the last stage."""

    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 local_conv_size: int, out_dim: int | None, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio, local_conv_size) for _ in range(depth)
        ])
        self.downsample = PatchMerging(resolution, dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """MobileSAM's image encoder: B x 3 x S x S (normalised, padded) -> B x out_chans x S/16 x S/16."""

    def __init__(self, cfg: TinyViTConfig = MOBILE_SAM_VIT_T) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_size = cfg.img_size  # SamOnnxModel reads image_encoder.img_size
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(3, dims[0])
        # Stage resolutions: S/4, S/8, S/16, S/16 (the last merge keeps the size, as in MobileSAM).
        res = [cfg.img_size // 4, cfg.img_size // 8, cfg.img_size // 16, cfg.img_size // 16]
        strides = [2, 2, 1]
        self.layers = nn.ModuleList()
        self.layers.append(
            ConvLayer(dims[0], res[0], cfg.depths[0], cfg.mbconv_expand_ratio, dims[1], strides[0])
        )
        for i in range(1, 4):
            self.layers.append(BasicLayer(
                dims[i], res[i], cfg.depths[i], cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio,
                cfg.local_conv_size, dims[i + 1] if i < 3 else None, strides[i] if i < 3 else 1,
            ))
        # Unused by SAM, kept so the published checkpoint loads with strict=True.
        self.norm_head = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0.0)
            nn.init.constant_(m.weight, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        g = self.img_size // 16
        x = x.view(x.shape[0], g, g, -1).permute(0, 3, 1, 2)
        return self.neck(x)
