"""The two UNets, built from the config with diffusers' UNet2DModel (explicit block types, never from the hub).

Input and output have the same channels ([RGB, background, types]): the network predicts the clean sample x0.
Model B has no attention and is fully convolutional, so trained on crops it runs on the full image at sampling.
Both take the defect type (0 .. K-1) as a class label (diffusers' class embedding, added to the time embedding).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from trainers.defectgen.config import GeneratorConfig, UNetSpec


def build_unet(spec: UNetSpec, channels: int, sample_size: int, n_classes: int) -> UNet2DModel:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in spec.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(spec.attention))
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        layers_per_block=spec.layers_per_block, block_out_channels=spec.block_channels,
        down_block_types=down, up_block_types=up, norm_num_groups=spec.norm_groups,
        attention_head_dim=spec.attention_head_dim, num_class_embeds=n_classes,
    )


def build_models(cfg: GeneratorConfig, n_classes: int) -> tuple[UNet2DModel, UNet2DModel]:
    """(large, small) for `n_classes` defect types."""
    ch = cfg.channels(n_classes)
    return build_unet(cfg.large, ch, cfg.resolution, n_classes), build_unet(cfg.small, ch, cfg.crop_size, n_classes)


def predict_x0(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's x0 estimate for noisy `x` at timesteps `t` of defect types `labels` (one each per sample)."""
    out = model(x, t, class_labels=labels)
    return out.sample if hasattr(out, "sample") else out


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
