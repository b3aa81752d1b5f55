"""Engine entry point of the train_multimodal job kind."""

from __future__ import annotations

import json

from engine.jobs.kinds_multimodal import TrainMultimodalParams
from engine.jobs.registry import Progress
from trainers.multimodal.fit import MultimodalConfig, train_multimodal


def train_job(params: TrainMultimodalParams, progress: Progress) -> dict:
    cfg = MultimodalConfig(image_size=params.image_size, geo_grid=params.geo_grid,
                           distill_epochs=params.distill_epochs, coreset_fraction=params.coreset_fraction,
                           rgb_weight=params.rgb_weight, geo_weight=params.geo_weight, seed=params.seed)
    out = train_multimodal(params.data, params.category, params.out, cfg, progress)
    meta = json.loads((out / "multimodal.json").read_text())
    depth = (meta.get("depth") or {}).get("kind", {}).get("description")
    return {"run_dir": str(out), "geo_features": meta["geo_features"], "depth_kind": depth,
            "fusion_weights": meta["fusion"]["weights"], "fusion_rule": meta["fusion"]["rule"]}
