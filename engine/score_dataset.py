"""Score every image of a dataset with an exported model: the engine job behind the GUI's "Score dataset".

Writes a predictions folder (engine.predictions: scores.json with score, verdict, label, defect type and resolved
split per image, keyed like the GUI's browser, and maps/) through the one scoring loop (engine.scoring).
"""

from __future__ import annotations

from pathlib import Path

from engine.datasets import load_dataset
from engine.datasets.keys import sample_key
from engine.errors import DefectScopeError
from engine.jobs.kinds import ScoreDatasetParams
from engine.jobs.registry import Progress
from engine.predictions import MAP_SIDE, SCORES_FILE, PredictionItem, PredictionsWriter, small_map
from engine.runtime.model_format import open_model
from engine.scoring import Scored, score_samples, select_samples

__all__ = ["MAP_SIDE", "SCORES_FILE", "score_dataset", "score_dataset_job", "small_map"]


def score_dataset(
    model_dir: str | Path, data: str | Path, out: str | Path, category: str | None = None,
    splits: list[str] | None = None, device: str = "auto", progress: Progress | None = None,
) -> dict:
    """Score the dataset's images (only `splits` when given: an image's resolved split, or the split its dataset
    declares, e.g. "unspecified") into the predictions folder `out`."""
    model = open_model(model_dir, device)
    root = Path(data)
    ds = load_dataset(root, category=category)
    samples = select_samples(ds.samples, splits)
    if not samples:
        raise DefectScopeError(f"{root}: no images to score" + (f" in splits {', '.join(splits)}" if splits else ""))
    writer = PredictionsWriter(out)
    for issue in ds.issues:
        writer.error(sample_key(root, issue.path), issue.reason)
    for r in score_samples(model, samples, key=lambda s: sample_key(root, s), progress=progress, every=5):
        if not isinstance(r, Scored):
            writer.error(r.key, r.error)
            continue
        s = r.sample
        writer.add(r.key, PredictionItem(str(s.image_path), r.score, r.verdict, label=s.label,
                                         defect_type=s.defect_type, split=s.split), r.anomaly_map)
    path = writer.finish(model=model_dir, threshold=model.threshold, provider=model.provider,
                         score_units=model.info.score_units, data=root, category=category, notes=model.notes)
    if model.notes and progress is not None:
        progress(1.0, " ".join(model.notes))
    return {"scores": str(path), "n_scored": len(writer.items), "n_errors": len(writer.errors),
            "provider": model.provider, "notes": model.notes}


def score_dataset_job(params: ScoreDatasetParams, progress: Progress) -> dict:
    return score_dataset(params.model, params.data, params.out, params.category, params.splits, params.device,
                         progress)
