"""The defect segmentation network: a frozen EfficientNet-Lite trunk tapped at strides 4, 8, 16 and 32, a light
FPN decoder back to stride 4, logits for background + K defect types at stride 4 (the exported graph upsamples
them: defect_segmentation_format).

The whole trunk stays frozen with its ImageNet weights, so training caches its features once per augmented view and
each step runs only the decoder. Measured on magnetic tile, 5 shots per type, the same ~5 CPU minutes: the frozen
trunk with 600 decoder steps reached held-out mIoU 0.30, fine-tuning the top stages (300 steps, as the detector
does) 0.20-0.26; with a few images per class the trunk only overfits. The stride-4 level keeps thin cracks a few
pixels wide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.common.efficientnet_lite import EfficientNetLiteFeatures

# EfficientNet stage indices: 1 ends at stride 4, 2 at 8, 4 at 16 (the wider of the two stride-16 stages), 5 at 32.
TAP_STAGES = (1, 2, 4, 5)
OUTPUT_STRIDE = 4
BACKGROUND_PRIOR = 0.9  # the classifier starts at p(background) = 0.9 everywhere: most pixels are background


@dataclass(frozen=True)
class SegArch:
    backbone: str = "efficientnet-lite0"
    num_classes: int = 1  # defect classes K; the logits have K + 1 channels (0 = background)
    image_size: int = 256  # the model frame: longest side resized to this, then padded to a square
    width: int = 64  # decoder channels

    def to_dict(self) -> dict:
        return asdict(self)


class _SepConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 + GroupNorm + ReLU: on the stride-4 level a full 3x3 conv costs ~8x more."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """FPN-style top-down path from stride 32 to stride 4, then one refining conv and the per-pixel classifier."""

    def __init__(self, in_channels: tuple[int, ...], width: int, n_out: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_SepConv(width, width) for _ in in_channels[:-1])
        self.refine = _SepConv(width, width)
        self.classify = nn.Conv2d(width, n_out, 1)
        nn.init.normal_(self.classify.weight, std=0.01)
        nn.init.zeros_(self.classify.bias)
        with torch.no_grad():  # p(background) = BACKGROUND_PRIOR, the rest shared by the K defect classes
            self.classify.bias[0] = math.log(BACKGROUND_PRIOR * (n_out - 1) / (1 - BACKGROUND_PRIOR))

    def forward(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        p = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            f = feats[i]
            p = self.smooth[i](self.lateral[i](f) + F.interpolate(p, size=f.shape[-2:], mode="nearest"))
        return self.classify(self.refine(p))


class SegmentationNet(nn.Module):
    def __init__(self, arch: SegArch) -> None:
        super().__init__()
        self.arch = arch
        self.trunk = EfficientNetLiteFeatures(arch.backbone, stages=TAP_STAGES)  # frozen (requires_grad off)
        self.decoder = Decoder(self.trunk.channels, arch.width, arch.num_classes + 1)

    def train(self, mode: bool = True) -> SegmentationNet:
        # The trunk keeps its ImageNet BatchNorm statistics whatever the mode.
        super().train(mode)
        self.trunk.eval()
        return self

    def forward_cached(self, *feats: torch.Tensor) -> torch.Tensor:
        """The trunk's features (strides 4, 8, 16, 32) -> logits."""
        return self.decoder(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded frame [B, 3, S, S] -> logits [B, K + 1, S / 4, S / 4]."""
        return self.decoder(tuple(self.trunk(x)))
