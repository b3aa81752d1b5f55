"""Training both models: x0-prediction with an MSE over all channels (image and mask alike), each model on its own
half of the schedule, a fixed number of AdamW steps, an optional time budget, one seed.

Model A (large) trains on full images at t in [s, T-1] and model B (small) on random crops at t in [0, s-1]: each
only ever runs on its half at sampling (trainers.defectgen.schedule), so training it on the other half would spend
its few parameters on noise levels it never sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainers.defectgen.config import GeneratorConfig
from trainers.defectgen.data import WindowBank, augmented_batch
from trainers.defectgen.diffusion import add_noise, alphas_cumprod
from trainers.defectgen.model import build_models, n_parameters, predict_x0

Progress = Callable[[float, str], None]


@dataclass
class FitReport:
    steps: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stopped_by_time_budget: dict[str, bool] = field(default_factory=dict)
    parameters: dict[str, int] = field(default_factory=dict)
    loss_history: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _fit_one(model: torch.nn.Module, name: str, data: WindowBank, cfg: GeneratorConfig, steps: int,
             t_range: tuple[int, int], crop: int | None, gen: torch.Generator, device: torch.device,
             budget_s: float | None, report: FitReport, progress: Progress) -> None:
    alpha_bar = alphas_cumprod(cfg.num_timesteps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    model.train()
    t0, step, total, since = time.monotonic(), 0, 0.0, 0
    stopped = False
    while step < steps:
        if budget_s is not None and time.monotonic() - t0 > budget_s:
            stopped = True
            break
        x0, labels = augmented_batch(data, cfg.batch_size, crop, gen)
        x0, labels = x0.to(device), labels.to(device)
        t = torch.randint(t_range[0], t_range[1] + 1, (x0.shape[0],), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        pred = predict_x0(model, add_noise(x0, noise, t, alpha_bar), t, labels)
        loss = torch.nn.functional.mse_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        total += float(loss.detach())
        since += 1
        if step % cfg.log_every == 0 or step == steps:
            history.append({"step": step, "loss": round(total / since, 5)})
            total, since = 0.0, 0
            progress(step / steps, f"{name}: step {step}/{steps}, loss {history[-1]['loss']:.4f}")
    if since:
        history.append({"step": step, "loss": round(total / since, 5)})
    model.eval()
    report.steps[name] = step
    report.seconds[name] = round(time.monotonic() - t0, 1)
    report.stopped_by_time_budget[name] = stopped
    report.parameters[name] = n_parameters(model)
    report.loss_history[name] = history


def fit_generator(data: WindowBank, n_classes: int, cfg: GeneratorConfig, seed: int = 0,
                  device: torch.device | None = None, time_budget_s: float | None = None,
                  progress: Progress | None = None) -> tuple[torch.nn.Module, torch.nn.Module, FitReport]:
    """Train (large, small) on `data` (trainers.defectgen.data: windows N x C x R x R in [-1, 1], type labels). The time budget is
    shared in proportion to each model's steps, so a budget-stopped run still trains both."""
    progress = progress or (lambda _f, _m: None)
    device = device or torch.device("cpu")
    torch.manual_seed(seed)  # the models' initial weights
    large, small = build_models(cfg, n_classes)
    large, small = large.to(device), small.to(device)
    gen = torch.Generator().manual_seed(seed)
    total = cfg.steps_large + cfg.steps_small
    share = cfg.steps_large / total
    report = FitReport()
    s, T = cfg.switch_step, cfg.num_timesteps
    _fit_one(large, "large", data, cfg, cfg.steps_large, (s, T - 1), None, gen, device,
             time_budget_s * share if time_budget_s else None, report, lambda f, m: progress(share * f, m))
    spent = report.seconds["large"]
    small_budget = max(time_budget_s - spent, 0.0) if time_budget_s else None
    _fit_one(small, "small", data, cfg, cfg.steps_small, (0, s - 1), cfg.crop_size, gen, device,
             small_budget, report, lambda f, m: progress(share + (1 - share) * f, m))
    return large, small, report
