"""The unified reconstruction model (UniAD family), apart from its training loop.

Frozen ImageNet EfficientNet-Lite stages at strides 4, 8 and 16 are pooled to the stride-16 grid and concatenated
(the "target" features, never trained). A transformer encoder-decoder reconstructs them: the encoder sees the
projected features (with feature jitter while training, so it cannot learn the identity), the decoder starts from
learned queries, one per grid position. Anomaly map = per-position L2 reconstruction error, upsampled and
blurred; image score = max of the average-pooled map. Nothing in it depends on how many products there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteFeatures
from trainers.patchcore.model import gaussian_kernel1d

STAGES = (1, 2, 4)  # strides 4, 8, 16 on EfficientNet-Lite0/1/2
# The exported graph's resize (trainers.common.onnx_graph): the learned queries are one per grid position, so the
# input is always image_size x image_size.
RESIZE = "stretch"


@dataclass(frozen=True)
class UnifiedConfig:
    image_size: int = 256  # multiple of 64 (the exported graph's resize); the grid is image_size / 16
    backbone: str = "efficientnet-lite0"
    d_model: int = 256
    heads: int = 8
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_dim: int = 1024
    jitter: float = 0.2  # feature jitter: noise std as a fraction of each token's RMS, training only
    blur_sigma: float = 4.0
    pool: int = 8  # image score = max of the map average-pooled over pool x pool pixels

    @property
    def grid(self) -> int:
        return self.image_size // 16


class TargetFeatures(nn.Module):
    """Frozen backbone stages -> N x D x g x g (the features to reconstruct)."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.backbone = EfficientNetLiteFeatures(backbone, STAGES).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.dim = sum(self.backbone.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone((x - PIXEL_MEAN) / PIXEL_STD)
        g = feats[-1].shape[-2:]
        return torch.cat([F.adaptive_avg_pool2d(f, g) for f in feats], 1)

    def train(self, mode: bool = True) -> TargetFeatures:
        super().train(mode)
        self.backbone.eval()
        return self


class Reconstructor(nn.Module):
    """Tokens (N x L x D) -> reconstructed tokens. The FFN output layers (`ffn_out_layers`) are where IUF's
    gradient projection acts."""

    def __init__(self, dim: int, cfg: UnifiedConfig) -> None:
        super().__init__()
        L = cfg.grid * cfg.grid
        self.cfg = cfg
        self.proj_in = nn.Linear(dim, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, L, cfg.d_model) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, L, cfg.d_model) * 0.02)
        enc = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ffn_dim, dropout=0.0, batch_first=True,
                                         norm_first=True)
        dec = nn.TransformerDecoderLayer(cfg.d_model, cfg.heads, cfg.ffn_dim, dropout=0.0, batch_first=True,
                                         norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, cfg.encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, cfg.decoder_layers)
        self.proj_out = nn.Linear(cfg.d_model, dim)

    def ffn_out_layers(self) -> list[nn.Linear]:
        """The second linear layer of every feed-forward block (input = the FFN's hidden activations)."""
        return [layer.linear2 for layer in [*self.encoder.layers, *self.decoder.layers]]

    def forward(self, tokens: torch.Tensor, jitter: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction N x L x D, decoder output N x L x d_model)."""
        if jitter and self.cfg.jitter > 0:
            rms = tokens.pow(2).mean(-1, keepdim=True).sqrt()
            tokens = tokens + torch.randn_like(tokens) * rms * self.cfg.jitter
        mem = self.encoder(self.proj_in(tokens) + self.pos)
        out = self.decoder(self.queries.expand(tokens.shape[0], -1, -1) + self.pos, mem)
        return self.proj_out(out), out


class UnifiedModel(nn.Module):
    """Image (N x 3 x S x S, 0..255) -> (score N, anomaly map N x 1 x S x S)."""

    def __init__(self, cfg: UnifiedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = TargetFeatures(cfg.backbone)
        self.reconstructor = Reconstructor(self.features.dim, cfg)
        self.register_buffer("kernel", gaussian_kernel1d(cfg.blur_sigma))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return f.flatten(2).transpose(1, 2)  # N x L x D

    def error_map(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        rec, _ = self.reconstructor(t)
        err = (t - rec).pow(2).sum(-1).sqrt()  # N x L
        g = self.cfg.grid
        return err.view(-1, 1, g, g)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = F.interpolate(self.error_map(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        k = self.kernel
        r = k.numel() // 2
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        m = F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
        score = F.avg_pool2d(m, self.cfg.pool, stride=self.cfg.pool).flatten(1).max(1).values
        return score, m
