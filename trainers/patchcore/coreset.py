"""Greedy k-center coreset selection, bounded in time and memory.

Greedy selection reads every candidate once per pick, so it is memory-bandwidth bound: candidates are
randomly projected to a few dimensions (Johnson-Lindenstrauss keeps the distances' ordering well enough) and,
above `max_candidates`, uniformly subsampled first. The bank is capped by size, not only by ratio, so memory
never grows with the training set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    *,
    projection_dim: int = 64,
    max_candidates: int = 400_000,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Indices (into `features`) of `n_select` patches chosen by greedy farthest-point selection."""
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.arange(n)
    if n > max_candidates:
        candidates = torch.randperm(n, generator=gen)[:max_candidates].sort().values
    x = features[candidates].float()
    if x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj
    x = x.contiguous()
    sqnorm = (x * x).sum(1)
    selected = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(len(x), (1,), generator=gen))
    min_d = torch.full((len(x),), float("inf"))
    report_every = max(1, n_select // 100)
    for i in range(n_select):
        selected[i] = current
        c = x[current]
        d = sqnorm - 2.0 * torch.mv(x, c) + sqnorm[current]
        torch.minimum(min_d, d, out=min_d)
        current = int(torch.argmax(min_d))
        if progress is not None and i % report_every == 0:
            progress(i / n_select)
    return candidates[selected]
