"""The one shared sampling plan: which absolute timesteps are visited, and which model denoises at each.

The public Defect-Gen code mixed absolute and relative step indices: the large model ran t = 599 .. 0 from pure
noise and the small model then re-ran 399 .. 0 (T = 1000, switch 400), so the large model never saw the noise
level it was sampled from and every step below 400 ran twice. Here there is one list of absolute timesteps from
T-1 down to 0, strictly decreasing, each visited once, and the model is a function of the timestep alone:
large for t >= s, small for t < s. Pure functions (no torch), so the plan is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

LARGE: Literal["large"] = "large"
SMALL: Literal["small"] = "small"


@dataclass(frozen=True)
class PlanStep:
    t: int  # absolute timestep denoised at this step
    t_prev: int  # absolute timestep the step lands on; -1: the clean sample (alpha_bar = 1)
    model: Literal["large", "small"]


def model_for(t: int, switch_step: int) -> Literal["large", "small"]:
    return LARGE if t >= switch_step else SMALL


def sampling_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` absolute timesteps evenly spread from T-1 to 0 (both included), strictly decreasing."""
    if steps < 2 or steps > num_timesteps:
        raise ValueError(f"steps {steps}: must be inside 2 .. {num_timesteps}")
    # Evenly spaced and rounded: distinct because the spacing (T-1)/(steps-1) is >= 1.
    return [int(v) for v in np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(int)]


def sampling_plan(num_timesteps: int, switch_step: int, steps: int) -> list[PlanStep]:
    """The DDIM plan: one step per timestep of `sampling_timesteps`, each landing on the next one (the last on
    the clean sample), with its model chosen by the absolute timestep."""
    if not 0 < switch_step < num_timesteps:
        raise ValueError(f"switch_step {switch_step}: must be inside 1 .. {num_timesteps - 1}")
    ts = sampling_timesteps(num_timesteps, steps)
    prev = [*ts[1:], -1]
    return [PlanStep(t, p, model_for(t, switch_step)) for t, p in zip(ts, prev, strict=True)]
