"""The noise schedule and the x0-parameterised forward and DDIM reverse steps.

alpha_bar comes from diffusers' cosine ("squaredcos_cap_v2") schedule. The reverse step is written here rather than
taken from DDIMScheduler.step: that step derives the previous timestep as t - T // steps, which is not the next
entry of an evenly spread T-1 .. 0 list; here every step lands exactly on the plan's t_prev
(trainers.defectgen.schedule), so the plan tested is the plan run.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def alphas_cumprod(num_timesteps: int) -> torch.Tensor:
    """alpha_bar[t] for t = 0 .. T-1 (float64 on the CPU) of the cosine schedule."""
    sched = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule="squaredcos_cap_v2")
    return sched.alphas_cumprod.to(torch.float64)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, per sample."""
    ab = alpha_bar.to(x0.device)[t].float().view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from timestep t to t_prev given the x0 estimate; t_prev = -1: the clean
    sample itself."""
    ab_t = float(alpha_bar[t])
    if t_prev < 0:
        return x0
    ab_prev = float(alpha_bar[t_prev])
    eps = (x_t - ab_t ** 0.5 * x0) / max(1 - ab_t, 1e-12) ** 0.5
    return ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
