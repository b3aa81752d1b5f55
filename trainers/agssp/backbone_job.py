"""Engine entry point of the pretrain_backbone job kind."""

from __future__ import annotations

from engine.jobs.kinds_agssp_pretrain import PretrainBackboneParams
from engine.jobs.registry import Progress
from trainers.agssp.backbone import PretrainConfig, pretrain_backbone


def pretrain_job(params: PretrainBackboneParams, progress: Progress) -> dict:
    from engine.pseudo_pool_format import read_pool  # the pseudo_boxes run folder's one owner

    pool = read_pool(params.pool)
    cfg = PretrainConfig(backbone=params.backbone, image_size=params.image_size, epochs=params.epochs,
                         batch_size=params.batch_size, lr=params.lr, distill_weight=params.distill_weight,
                         seed=params.seed, device=params.device, time_budget_s=params.time_budget_s)
    return pretrain_backbone([str(p) for p in pool.images], pool.maps, params.out, cfg, progress,
                             pool=str(params.pool))
