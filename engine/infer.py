"""Batch inference for the CLI, chosen by the model's task (`INFERRERS`): for scoring models heatmap overlays plus a
predictions folder (engine.predictions, the schema the GUI reads), for detectors boxes as JSON and drawn pictures
(engine.detection_infer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.imageio import is_image_file
from engine.datasets.types import Sample
from engine.errors import DefectScopeError
from engine.predictions import PredictionItem, PredictionsWriter
from engine.runtime.model_format import ModelInfo, open_model, read_model_info
from engine.runtime.visualize import overlay_heatmap
from engine.scoring import NG, Scored, score_samples


def collect_images(inputs: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, output name) pairs: files as given, folders expanded recursively (sorted).

    The output name is the path relative to the folder given, so `test/dent/000.png` and `test/good/000.png`
    give `dent_000` and `good_000`, not two look-alike names. A missing path is an error naming it.
    """
    files: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if is_image_file(f)):
                files.append((f, "_".join(f.relative_to(p).with_suffix("").parts)))
        elif p.is_file():
            files.append((p, p.stem))
        else:
            raise DefectScopeError(f"{p}: no such image or folder")
    if not files:
        raise DefectScopeError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return files


def infer(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path, device: str = "auto",
          prompts: str | Path | None = None) -> dict:
    """Score loose image files into OUT (scores.json + maps/ + one `<name>_heatmap.png` overlay per image).

    Returns a summary: provider, threshold, notes, `results` (path, score, verdict, heatmap per scored image) and
    `errors` (path, error per unreadable one). Items are keyed by their output name; they have no split.
    A detector writes its own outputs instead (INFERRERS); `prompts` (an open-set detector's classes to search
    for, engine.class_prompts) applies to detectors only.
    """
    info = read_model_info(model_dir)
    return INFERRERS.get(info.task, _infer_scores)(info, inputs, out_dir, device, prompts)


def _infer_scores(info: ModelInfo, inputs: list[str | Path], out_dir: str | Path, device: str,
                  prompts: str | Path | None = None) -> dict:
    if prompts is not None:
        raise DefectScopeError(f"prompts {prompts}: only an open-set detector takes prompts; {info.folder} is a "
                               f"{info.kind} model")
    model_dir = info.folder
    model = open_model(info, device)
    out = Path(out_dir)
    used: set[str] = set()
    names: dict[int, str] = {}  # by sample identity: the same file given twice gets two names
    samples = []
    for path, stem in collect_images(inputs):
        samples.append(Sample(image_path=path))
        names[id(samples[-1])] = unique_name(stem, used)
    writer = PredictionsWriter(out)
    results, errors = [], []
    for r in score_samples(model, samples, key=lambda s: names[id(s)]):
        path = r.sample.image_path
        if not isinstance(r, Scored):
            reason = r.error.removeprefix(f"{path}: ")
            writer.error(r.key, r.error)
            errors.append({"path": str(path), "error": reason})
            continue
        heat_name = f"{r.key}_heatmap.png"
        overlay = overlay_heatmap(r.image, _at_image_size(r.anomaly_map, r.image.shape[:2]), model.threshold)
        cv2.imwrite(str(out / heat_name), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        item = writer.add(r.key, PredictionItem(str(path), r.score, r.verdict, extra={"heatmap": heat_name}),
                          r.anomaly_map)
        results.append({"path": item.path, "score": round(r.score, 6), "verdict": r.verdict, "heatmap": heat_name})
    writer.finish(model=model_dir, threshold=model.threshold, provider=model.provider,
                  score_units=model.info.score_units, notes=model.notes)
    return {"model": str(Path(model_dir).resolve()), "scores": str(out / "scores.json"), "provider": model.provider,
            "threshold": model.threshold, "notes": list(model.notes), "results": results, "errors": errors,
            "n_ng": sum(r["verdict"] == NG for r in results)}


def _at_image_size(amap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A map at the image's size for the overlay (the RGB + 3D model's maps are on its own square grid)."""
    if amap.shape[:2] == tuple(shape):
        return amap
    return cv2.resize(amap.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def unique_name(stem: str, used: set[str]) -> str:
    """`stem`, or `stem_2`, `stem_3`... when an earlier image took it."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def _infer_detections(info: ModelInfo, inputs: list[str | Path], out_dir: str | Path, device: str,
                      prompts: str | Path | None = None) -> dict:
    from engine.detection_infer import infer_detector

    return infer_detector(info, inputs, out_dir, device, prompts)


# model task -> its inference; tasks not listed are run as image scorers (open_model refuses non-scorers)
INFERRERS: dict[str, Callable[[ModelInfo, list[str | Path], str | Path, str, str | Path | None], dict]] = {
    "detector": _infer_detections,
}
