"""IUF's three mechanisms for learning a new product without the old products' images.

(a) Weight anchoring: a quadratic pull towards the previous step's weights.
(b) Gradient projection: at the end of every step, the inputs of each FFN output layer (its hidden activations)
    are captured on that step's training images; their principal directions (SVD) are stored with the model. In
    later steps the gradient of those layers is projected away from the directions, each damped by its rank (the
    strongest directions of old products are protected most), so the layers' outputs on old products' activations
    barely move. Captured *every* step, whatever the epoch count (the public code only captured on epochs that are
    multiples of 2000, so the projection never acted).
(c) Semantic compression: the share of the decoder features' nuclear norm held by their small singular values,
    with real gradients (the public code computed it on detached tensors, so it did nothing). A share, not a raw
    sum, so the loss cannot be lowered by shrinking the features and its weight does not depend on their scale
    (a raw sum with weight 0.01 swamped the reconstruction loss and ruined the base step: grid image AUROC 0.12).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def anchoring_loss(model: nn.Module, previous: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of squared differences to the previous step's trainable weights (0 when there is none)."""
    terms = [(p - previous[n]).pow(2).sum() for n, p in model.named_parameters() if p.requires_grad and n in previous]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def compression_loss(features: torch.Tensor, keep: int) -> torch.Tensor:
    """Mean over images of the share of the singular values beyond the `keep` largest (features: N x L x d)."""
    s = torch.linalg.svdvals(features.float())  # N x min(L, d), differentiable
    return (s[:, keep:].sum(-1) / s.sum(-1).clamp_min(1e-12)).mean()


class ActivationBases:
    """Principal input directions of each protected layer, accumulated over steps (old products)."""

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] = {}  # layer name -> in_dim x k orthonormal columns
        self.weights: dict[str, torch.Tensor] = {}  # layer name -> k damping factors in (0, 1]

    def capture(self, acts: dict[str, torch.Tensor], energy: float = 0.97, max_rank: int | None = None) -> None:
        """Add the directions holding `energy` of the activations' variance (acts: name -> samples x in_dim)."""
        for name, a in acts.items():
            a = a.float()
            old = self.bases.get(name)
            if old is not None:  # only what the old bases do not already span
                a = a - (a @ old) @ old.T
            u, s, _ = torch.linalg.svd(a.T, full_matrices=False)
            if s.numel() == 0 or float(s.pow(2).sum()) == 0.0:
                continue
            frac = torch.cumsum(s.pow(2), 0) / s.pow(2).sum()
            k = int((frac < energy).sum()) + 1
            if max_rank:
                k = min(k, max_rank)
            new = u[:, :k]
            damp = 1.0 - torch.arange(k, dtype=torch.float32, device=a.device) / max(k, 1)  # rank 0 fully protected
            if old is None:
                self.bases[name], self.weights[name] = new, damp
            else:
                q, _ = torch.linalg.qr(torch.cat([old, new], 1))
                self.bases[name] = q[:, : old.shape[1] + k]
                self.weights[name] = torch.cat([self.weights[name], damp])

    def project(self, layers: dict[str, nn.Linear]) -> None:
        """Project the current gradients of `layers` (call between backward() and step())."""
        for name, layer in layers.items():
            basis = self.bases.get(name)
            if basis is None or layer.weight.grad is None:
                continue
            g = layer.weight.grad  # out x in
            basis = basis.to(g)
            coeff = (g @ basis) * self.weights[name].to(g)  # out x k
            layer.weight.grad = g - coeff @ basis.T

    def to(self, device: torch.device | str) -> ActivationBases:
        """Moves the bases (in place) and returns self."""
        self.bases = {k: v.to(device) for k, v in self.bases.items()}
        self.weights = {k: v.to(device) for k, v in self.weights.items()}
        return self

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"basis.{k}": v for k, v in self.bases.items()}, **{f"damp.{k}": v for k, v in self.weights.items()}}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> ActivationBases:
        b = cls()
        for key, v in state.items():
            kind, name = key.split(".", 1)
            (b.bases if kind == "basis" else b.weights)[name] = v
        return b


def capture_ffn_inputs(layers: dict[str, nn.Linear], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Inputs seen by each layer while `run()` runs (forward hooks), as samples x in_dim."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [layer.register_forward_hook(lambda _m, inp, _o, n=n: seen[n].append(inp[0].detach().reshape(
        -1, inp[0].shape[-1]))) for n, layer in layers.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items() if v}
