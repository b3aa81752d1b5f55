"""Cross-modal feature-to-feature networks (CMDIAD): LayerNorm + MLP with a wide hidden layer.

Trained on good parts only, on standardised patch features: each network learns what one modality's local
appearance says about the other's. Early stopping on held-out good parts' patches keeps the stand-ins honest
(a network that memorised the training patches would make every test patch look far from the stand-in bank).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn


class FeatureTranslator(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_translator(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     epochs: int = 60, hidden: int = 1024, lr: float = 1e-3, batch: int = 512, seed: int = 0,
                     time_budget_s: float | None = None) -> tuple[FeatureTranslator, dict]:
    """The network with the lowest held-out MSE seen, and its training record."""
    torch.manual_seed(seed)
    net = FeatureTranslator(x_train.shape[1], y_train.shape[1], hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x_train).float(), torch.from_numpy(y_train).float()
    xv, yv = torch.from_numpy(x_val).float(), torch.from_numpy(y_val).float()
    gen = torch.Generator().manual_seed(seed)
    best, best_val, history = copy.deepcopy(net.state_dict()), float("inf"), []
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            loss = nn.functional.mse_loss(net(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(nn.functional.mse_loss(net(xv), yv)) if len(xv) else float(loss)
        history.append(round(val, 5))
        if val < best_val:
            best_val, best = val, copy.deepcopy(net.state_dict())
        if time_budget_s and time.perf_counter() - t0 > time_budget_s:
            break
    net.load_state_dict(best)
    net.eval()
    return net, {"val_mse": round(best_val, 5), "epochs": len(history), "val_history": history[-10:]}
