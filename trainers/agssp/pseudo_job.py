"""Engine entry point of the pseudo_boxes job kind: pool -> anomaly maps -> pseudo boxes -> run folder.

Torch is imported only for mutual scoring: with an anomaly model as scorer the job runs on ONNX Runtime alone.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.errors import DatasetError, DefectScopeError
from engine.jobs.kinds_agssp import PseudoBoxesParams
from engine.jobs.registry import Progress
from engine.pseudo_boxes import BoxRule, pool_boxes
from engine.pseudo_pool import assemble_pool, model_maps
from engine.pseudo_pool_format import MAP_SIZE, MUTUAL, PoolRun, read_pool, write_pool

# Progress fractions: collecting the pool, scoring, making boxes, writing.
_POOL, _SCORED, _BOXED = 0.03, 0.85, 0.97


def _span(progress: Progress, lo: float, hi: float) -> Progress:
    return lambda fraction, message: progress(lo + (hi - lo) * fraction, message)


def pseudo_boxes_job(params: PseudoBoxesParams, progress: Progress) -> dict:
    t0 = time.perf_counter()
    rule = BoxRule(margin=params.margin, top_k=params.top_k, nms_iou=params.nms_iou)
    progress(0.0, "collecting the pool")
    pool = assemble_pool(params.pool, params.exclude)
    sizes = pool.group_sizes()
    progress(_POOL, f"pool: {len(pool.images)} images in {len(sizes)} groups; {pool.excluded_count} evaluation "
                    f"images excluded, {pool.duplicates} duplicates, {len(pool.unreadable)} unreadable")

    scoring = _span(progress, _POOL, _SCORED)
    if params.scorer is None:
        small = [g for g, n in sizes.items() if n < 2]
        if small:
            raise DatasetError(f"{pool.group_roots[small[0]]}: mutual scoring compares images within a pool folder, "
                               f"and this one has {sizes[small[0]]} usable image; give it at least 2 (better 30 or "
                               "more) or score with an anomaly model (--scorer MODEL)")
        from trainers.agssp.mutual import MutualConfig, mutual_maps  # torch: only for mutual scoring

        cfg = MutualConfig(references=params.references, seed=params.seed, device=params.device)
        maps, errors, stats = mutual_maps(pool.images, pool.groups, cfg, scoring)
        scorer, provider = MUTUAL, f"mutual scoring (torch, {stats['device']})"
    else:
        maps, errors, stats = model_maps(params.scorer, pool.images, params.device, scoring)
        scorer, provider = str(Path(params.scorer).resolve()), str(stats["provider"])

    unreadable = dict(pool.unreadable)
    unreadable.update({str(pool.images[i]): reason for i, reason in errors.items()})
    keep = [i for i, m in enumerate(maps) if m is not None]
    if not keep:
        raise DefectScopeError(f"none of the {len(pool.images)} pool images could be read (first problem: "
                               f"{next(iter(unreadable.values()), 'unknown')})")
    kept_maps = [maps[i] for i in keep]
    result = pool_boxes(kept_maps, rule, MAP_SIZE, _span(progress, _SCORED, _BOXED))

    metadata = {
        "group_roots": {g: str(r) for g, r in pool.group_roots.items()},
        "excluded": {"count": pool.excluded_count, "sources": list(pool.excluded.sources),
                     "test_images": len(pool.excluded.paths)},
        "duplicates": pool.duplicates, "unreadable": unreadable, "empty_folders": pool.empty_folders,
        "warnings": pool.warnings,
        "norm": {"lo": result.norm.lo, "hi": result.norm.hi, "rule": "(m - lo) / (hi - lo), pool min and max"},
        "rule": rule.to_dict(), "provider": provider, "scoring": stats,
        "seed": params.seed, "references": params.references if scorer == MUTUAL else None,
        "images_with_boxes": int(sum(1 for b in result.boxes if len(b))),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    run = PoolRun(images=[pool.images[i] for i in keep], groups=[pool.groups[i] for i in keep],
                  keys=[pool.keys[i] for i in keep], sizes=[m.size for m in kept_maps], maps=result.maps,
                  boxes=result.boxes, scores=result.scores, threshold=result.threshold, margin=params.margin,
                  scorer=scorer, metadata=metadata)
    write_pool(params.out, run)
    written = read_pool(params.out)  # what the pretraining stages will read, checked before the job succeeds
    progress(1.0, f"{result.n_boxes} pseudo boxes on {metadata['images_with_boxes']}/{len(keep)} images at "
                  f"threshold {result.threshold:.3f}")
    return {"out": str(Path(params.out).resolve()), "n_images": len(written.images), "n_boxes": result.n_boxes,
            "images_with_boxes": metadata["images_with_boxes"], "threshold": result.threshold,
            "excluded": pool.excluded_count, "unreadable": len(unreadable), "seconds": metadata["seconds"],
            "scorer": scorer, "warnings": pool.warnings}
