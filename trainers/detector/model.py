"""The detector network: EfficientNet-Lite trunk (stages to stride 32), a small FPN, a shared FCOS head.

The trunk is split where training caches it: `stem` runs the frozen stages up to stride 16 (their stride-8 tap
and stride-16 output are what the cache stores), `top` runs the last two stages, which are first frozen and then
fine-tuned. The head predicts, per location of P3..P5 (strides 8, 16, 32), class logits, a centerness logit and
the distances to the box sides (ReLU x stride, so the exported decode is a few elementwise ops).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.common.efficientnet_lite import EfficientNetLiteFeatures

# EfficientNet stage indices: 2 ends at stride 8, 3 at stride 16, 4 at stride 16 (wider), 5 at stride 32.
CACHED_STAGES = (2, 3)
TOP_STAGES = (4, 5)
STRIDES = (8, 16, 32)
# FCOS size ranges per level, as the longest side distance (model-input pixels) a level regresses.
LEVEL_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, float("inf")))


@dataclass(frozen=True)
class DetectorArch:
    backbone: str = "efficientnet-lite0"
    num_classes: int = 1
    image_size: int = 256  # the model frame: longest side resized to this, then padded to a square
    width: int = 64  # FPN and head channels

    def to_dict(self) -> dict:
        return asdict(self)


class _ConvGNReLU(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1 (as EfficientDet's and NanoDet's heads): on the stride-8 level a full 3x3
    conv would cost ~8x more and dominate a CPU training step."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class Trunk(nn.Module):
    """EfficientNet-Lite split into the frozen part (`stem`) and the fine-tunable top stages (`top`)."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        feats = EfficientNetLiteFeatures(backbone, stages=(*CACHED_STAGES, *TOP_STAGES))
        self.stem_conv = feats.stem
        stages = feats.block_stage
        self.low = nn.ModuleList(b for b, s in zip(feats.blocks, stages, strict=True) if s <= CACHED_STAGES[0])
        self.mid = nn.ModuleList(b for b, s in zip(feats.blocks, stages, strict=True) if s == CACHED_STAGES[1])
        self.stage4 = nn.ModuleList(b for b, s in zip(feats.blocks, stages, strict=True) if s == TOP_STAGES[0])
        self.stage5 = nn.ModuleList(b for b, s in zip(feats.blocks, stages, strict=True) if s == TOP_STAGES[1])
        self.cached_channels = (self.low[-1].project[1].out_channels, self.mid[-1].project[1].out_channels)
        self.out_channels = (self.cached_channels[0], self.stage4[-1].project[1].out_channels,
                             self.stage5[-1].project[1].out_channels)
        for p in self.parameters():
            p.requires_grad_(False)

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image -> (stride-8 tap, stride-16 output): what the training cache stores."""
        x = self.stem_conv(x)
        for b in self.low:
            x = b(x)
        c3 = x
        for b in self.mid:
            x = b(x)
        return c3, x

    def top(self, c3: torch.Tensor, h16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = h16
        for b in self.stage4:
            x = b(x)
        c4 = x
        for b in self.stage5:
            x = b(x)
        return c3, c4, x

    def top_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.stage4, self.stage5) for p in m.parameters()]

    def train(self, mode: bool = True) -> Trunk:
        # BatchNorm keeps the ImageNet statistics: detection batches are small and would only add noise.
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_ConvGNReLU(width, width) for _ in in_channels)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        outs = [lat[-1]]
        for x in reversed(lat[:-1]):
            outs.insert(0, x + F.interpolate(outs[0], size=x.shape[-2:], mode="nearest"))
        return [s(o) for s, o in zip(self.smooth, outs, strict=True)]


class Head(nn.Module):
    """Shared across levels: a two-conv tower, then class, centerness and box-distance predictions."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(_ConvGNReLU(width, width), _ConvGNReLU(width, width))
        self.cls = nn.Conv2d(width, num_classes, 3, padding=1)
        self.ctr = nn.Conv2d(width, 1, 3, padding=1)
        self.reg = nn.Conv2d(width, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))
        nn.init.constant_(self.cls.bias, -4.6)  # prior 0.01: the focal loss starts from "background everywhere"
        for conv in (self.cls, self.ctr, self.reg):
            nn.init.normal_(conv.weight, std=0.01)
        nn.init.constant_(self.reg.bias, 1.0)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> cls logits [B, L, C], centerness logits [B, L], side distances [B, L, 4] (model-input pixels)."""
        cls, ctr, reg = [], [], []
        for i, (f, stride) in enumerate(zip(feats, STRIDES, strict=True)):
            t = self.tower(f)
            cls.append(self.cls(t).flatten(2).transpose(1, 2))
            ctr.append(self.ctr(t).flatten(1))
            reg.append((F.relu(self.reg(t) * self.scales[i]) * stride).flatten(2).transpose(1, 2))
        return torch.cat(cls, 1), torch.cat(ctr, 1), torch.cat(reg, 1)


def level_points(image_size: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of every head location (model-input pixels, [L, 2] as x, y) and each one's level index [L]."""
    pts, lvl = [], []
    for i, stride in enumerate(STRIDES):
        n = image_size // stride
        c = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) * stride
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        pts.append(torch.stack([xx.flatten(), yy.flatten()], 1))
        lvl.append(torch.full((n * n,), i, dtype=torch.long, device=device))
    return torch.cat(pts), torch.cat(lvl)


def decode(points: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """Side distances [B, L, 4] at points [L, 2] -> boxes x0, y0, x1, y1 [B, L, 4]."""
    return torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)


class Detector(nn.Module):
    def __init__(self, arch: DetectorArch) -> None:
        super().__init__()
        self.arch = arch
        self.trunk = Trunk(arch.backbone)
        self.fpn = FPN(self.trunk.out_channels, arch.width)
        self.head = Head(arch.width, arch.num_classes)
        points, _ = level_points(arch.image_size)
        self.register_buffer("points", points, persistent=False)

    def forward_cached(self, c3: torch.Tensor, h16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.fpn(self.trunk.top(c3, h16)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised, padded model frame [B, 3, S, S] -> (cls logits, centerness logits, side distances)."""
        return self.forward_cached(*self.trunk.stem(x))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The whole trunk, FPN and head: the stem is frozen while training, but may itself come from an
        initialisation other than the pip checkpoint (anomaly-guided backbone pretraining), which --init carries on."""
        keep = ("trunk.", "fpn.", "head.")
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k.startswith(keep)}


class DetectorCore(nn.Module):
    """The exported core: model frame -> boxes [1, L, 4] (model-input pixels) and scores [1, C, L].

    score = sqrt(sigmoid(class) * sigmoid(centerness)), FCOS's ranking score, so NMS and the threshold see one
    number per class and location.
    """

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls, ctr, dist = self.detector(x)
        boxes = decode(self.detector.points, dist)
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)[..., None])
        return boxes, scores.transpose(1, 2)
