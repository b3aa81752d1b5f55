"""FCOS targets and losses: which location learns which box, focal loss, GIoU loss, centerness BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.detector.model import LEVEL_RANGES, STRIDES

CENTER_RADIUS = 1.5  # centre sampling, in strides: only locations near a box centre are positives


def assign(points: torch.Tensor, levels: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
           num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets: class per location [L] (num_classes = background) and side distances [L, 4].

    A location is positive for a box when it lies inside the box and within CENTER_RADIUS strides of its centre,
    and the box's largest side distance falls in the location's level range; several candidates: the smallest box.
    A box too small for any centre-sampled location still gets the location nearest its centre on P3, so tiny
    defects are never left without a positive.
    """
    n_loc = points.shape[0]
    cls_t = torch.full((n_loc,), num_classes, dtype=torch.long, device=points.device)
    reg_t = torch.zeros((n_loc, 4), device=points.device)
    if boxes.numel() == 0:
        return cls_t, reg_t
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)  # [L, G, 4]
    stride = torch.tensor(STRIDES, dtype=torch.float32, device=points.device)[levels][:, None]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near = ((x - cx).abs() < CENTER_RADIUS * stride) & ((y - cy).abs() < CENTER_RADIUS * stride)
    ranges = torch.tensor(LEVEL_RANGES, device=points.device)[levels]
    reach = ltrb.max(-1).values
    ok = (ltrb.min(-1).values > 0) & near & (reach >= ranges[:, 0:1]) & (reach <= ranges[:, 1:2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(n_loc, -1)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    pos = torch.isfinite(best_area)
    missing = ~ok.any(0)
    if missing.any():
        p3 = (levels == 0).nonzero().squeeze(1)
        d = (points[p3, 0:1] - cx[missing]) ** 2 + (points[p3, 1:2] - cy[missing]) ** 2
        nearest = p3[d.argmin(0)]
        free = ~pos[nearest]
        best[nearest[free]] = missing.nonzero().squeeze(1)[free]
        pos[nearest[free]] = True
    cls_t[pos] = labels[best[pos]]
    reg_t[pos] = ltrb[pos, best[pos]].clamp(min=0.0)
    if missing.any():  # the nearest location may lie just outside a tiny box: keep its distances positive
        reg_t[pos] = reg_t[pos].clamp(min=1e-3)
    return cls_t, reg_t


def centerness(reg_t: torch.Tensor) -> torch.Tensor:
    lr, tb = reg_t[:, [0, 2]], reg_t[:, [1, 3]]
    return torch.sqrt((lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6))
                      * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)))


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as side distances from the same point ([N, 4] each)."""
    pa = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    ta = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    iw = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    ih = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = pa + ta - inter
    iou = inter / union.clamp(min=1e-6)
    ew = torch.max(pred[:, 0], target[:, 0]) + torch.max(pred[:, 2], target[:, 2])
    eh = torch.max(pred[:, 1], target[:, 1]) + torch.max(pred[:, 3], target[:, 3])
    enclose = (ew * eh).clamp(min=1e-6)
    return 1 - (iou - (enclose - union) / enclose)


def detection_loss(cls: torch.Tensor, ctr: torch.Tensor, dist: torch.Tensor, cls_t: torch.Tensor,
                   reg_t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch losses: cls [B, L, C], ctr [B, L], dist [B, L, 4]; targets from `assign`, stacked [B, L] / [B, L, 4]."""
    num_classes = cls.shape[-1]
    pos = cls_t < num_classes
    n_pos = max(float(pos.sum()), 1.0)
    onehot = F.one_hot(cls_t, num_classes + 1)[..., :num_classes].to(cls.dtype)
    p = torch.sigmoid(cls)
    ce = F.binary_cross_entropy_with_logits(cls, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = 0.25 * onehot + 0.75 * (1 - onehot)
    loss_cls = (alpha_t * ce * (1 - p_t) ** 2).sum() / n_pos
    if not pos.any():
        zero = dist.sum() * 0 + ctr.sum() * 0
        return {"cls": loss_cls, "box": zero, "ctr": zero, "total": loss_cls + zero}
    ctr_t = centerness(reg_t[pos])
    w = ctr_t.sum().clamp(min=1e-6)
    loss_box = (giou_loss(dist[pos], reg_t[pos]) * ctr_t).sum() / w
    loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], ctr_t, reduction="sum") / n_pos
    return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr, "total": loss_cls + loss_box + loss_ctr}
