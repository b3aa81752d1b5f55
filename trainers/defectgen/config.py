"""The generator's shape and training constants: one frozen dataclass, with the presets the job offers.

Channel layout of every tensor the models see: [R, G, B, background, type 1 .. type K], all scaled to [-1, 1]
(mask channels one-hot at +1 / -1). Background first, so argmax over the mask channels is the SegSample label
(0 background, i = class i - 1) with no remapping. Both models are also conditioned on the defect type (a class
embedding added to the timestep embedding), so a type is asked for, not fished for by rejection.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

IMAGE_CHANNELS = 3


@dataclass(frozen=True)
class UNetSpec:
    """One UNet: channels per resolution level (each level after the first halves the resolution) and which
    levels carry self-attention."""

    block_channels: tuple[int, ...]
    attention: tuple[bool, ...]
    layers_per_block: int = 1
    norm_groups: int = 16
    attention_head_dim: int = 32

    def __post_init__(self) -> None:
        if len(self.attention) != len(self.block_channels):
            raise ValueError("attention: one flag per level of block_channels")
        if any(c % self.norm_groups for c in self.block_channels):
            raise ValueError(f"block_channels {self.block_channels}: each a multiple of norm_groups {self.norm_groups}")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_channels) - 1)


@dataclass(frozen=True)
class GeneratorConfig:
    resolution: int  # square side of the model's images (data are resized to it)
    large: UNetSpec  # model A: early, noisy steps t >= switch_step; global structure
    small: UNetSpec  # model B: late steps t < switch_step; local texture, trained on crops
    crop_size: int  # side of model B's random training crops
    num_timesteps: int = 1000  # T
    switch_step: int = 400  # s: model A for t = T-1 .. s, model B for t = s-1 .. 0
    sampling_steps: int = 50
    # Training windows (trainers.defectgen.data): side = defect box side x U(window_context), centre moved by up
    # to window_jitter x side, this many random windows per real defect.
    window_context: tuple[float, float] = (1.5, 3.0)
    window_jitter: float = 0.2
    windows_per_defect: int = 12
    # Training constants (a job may override steps, batch size and the time budget).
    steps_large: int = 2000
    steps_small: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    log_every: int = 25

    def __post_init__(self) -> None:
        if not 0 < self.switch_step < self.num_timesteps:
            raise ValueError(f"switch_step {self.switch_step}: must be inside 1 .. {self.num_timesteps - 1}")
        if self.resolution % self.large.downsampling or self.resolution % self.small.downsampling:
            raise ValueError(f"resolution {self.resolution}: not divisible by both models' downsampling")
        if self.crop_size > self.resolution or self.crop_size % self.small.downsampling:
            raise ValueError(f"crop_size {self.crop_size}: at most the resolution and divisible by "
                             f"{self.small.downsampling}")

    def channels(self, n_classes: int) -> int:
        return IMAGE_CHANNELS + 1 + n_classes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        d = dict(data)
        for key in ("large", "small"):
            spec = dict(d[key])
            spec["block_channels"] = tuple(spec["block_channels"])
            spec["attention"] = tuple(spec["attention"])
            d[key] = UNetSpec(**spec)
        if "window_context" in d:
            d["window_context"] = tuple(d["window_context"])
        return cls(**d)

    def with_overrides(self, **changes: Any) -> GeneratorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# The sizes methods.md gives for a CPU run: ~64 px, base 32 channels, 1-3 M parameters per model, attention only
# at low resolution (16 and 8 px) where it is cheap; model B sees 32 px crops, so its receptive field is local.
CPU_TINY = GeneratorConfig(
    resolution=64,
    large=UNetSpec(block_channels=(32, 64, 64, 128), attention=(False, False, True, True)),
    small=UNetSpec(block_channels=(32, 64, 64), attention=(False, False, False)),
    crop_size=32,
    steps_large=1500, steps_small=1500, batch_size=8, lr=3e-4,
)

# A real run on one GPU in minutes: 128 px, twice the width, two res-blocks per level.
GPU = GeneratorConfig(
    resolution=128,
    large=UNetSpec(block_channels=(64, 128, 128, 256, 256), attention=(False, False, False, True, True),
                   layers_per_block=2, norm_groups=32, attention_head_dim=64),
    small=UNetSpec(block_channels=(64, 128, 192), attention=(False, False, False), layers_per_block=2,
                   norm_groups=32),
    crop_size=64,
    steps_large=20000, steps_small=20000, batch_size=16, lr=2e-4,
)

PRESETS: dict[str, GeneratorConfig] = {"cpu_tiny": CPU_TINY, "gpu": GPU}
