"""The segmentation loss: cross-entropy over background + K classes plus soft Dice over the defect classes.

Defects cover a few percent of the pixels at most; cross-entropy alone settles for "background everywhere" on thin
cracks, Dice weighs each class by its own area. Both are computed on the logits upsampled to the frame (what the
exported graph does before its softmax), ignoring the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.metrics.segmentation import IGNORE

DICE_SMOOTH = 1.0


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """logits [B, K + 1, s, s] (stride 4), target [B, S, S] uint8 (IGNORE in the padding) -> {"ce", "dice", "total"}.

    Dice is averaged over the defect classes present in the batch: one absent from it would only be pushed towards
    "nowhere", which cross-entropy already does."""
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    t = target.long()
    ce = F.cross_entropy(up, t, ignore_index=IGNORE)
    valid = (t != IGNORE).unsqueeze(1).to(up.dtype)
    n_classes = up.shape[1]
    onehot = F.one_hot(torch.where(t == IGNORE, 0, t), n_classes).permute(0, 3, 1, 2).to(up.dtype) * valid
    prob = up.softmax(1) * valid
    inter = (prob * onehot).sum((0, 2, 3))[1:]
    denom = prob.sum((0, 2, 3))[1:] + onehot.sum((0, 2, 3))[1:]
    present = onehot.sum((0, 2, 3))[1:] > 0
    if present.any():
        dice = 1 - ((2 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH))[present].mean()
    else:
        dice = up.new_zeros(())
    return {"ce": ce, "dice": dice, "total": ce + dice_weight * dice}
