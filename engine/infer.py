"""Batch inference for the CLI: heatmap overlays and a scores JSON for images and folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from engine.datasets.imageio import is_image_file, read_image
from engine.errors import DefectScopeError
from engine.runtime import AnomalyModel
from engine.runtime.visualize import overlay_heatmap


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


def infer(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path, device: str = "auto") -> dict:
    model = AnomalyModel(model_dir, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, errors, used = [], [], set()
    for path, stem in collect_images(inputs):
        try:
            image = read_image(path)
        except DefectScopeError as exc:
            errors.append({"path": str(path), "error": exc.reason if hasattr(exc, "reason") else str(exc)})
            continue
        pred = model.predict(image)
        name = _unique(stem, used)
        heat_path = out / f"{name}_heatmap.png"
        overlay = overlay_heatmap(image, pred.anomaly_map, model.threshold)
        cv2.imwrite(str(heat_path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        results.append(
            {
                "path": str(path),
                "score": round(pred.score, 6),
                "verdict": "NG" if pred.is_anomalous else "OK",
                "heatmap": heat_path.name,
            }
        )
    summary = {
        "model": str(Path(model_dir).resolve()),
        "provider": model.provider,
        "threshold": model.threshold,
        "results": results,
        "errors": errors,
    }
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    return summary


def _unique(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name
