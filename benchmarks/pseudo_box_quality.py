"""How good are pseudo boxes? Precision and recall at IoU 0.3 against real boxes; mutual scoring's speed.

Runs the CLI as a user would (`defectscope pseudo-boxes`, `defectscope train anomaly`) in subprocesses:
- magnetic tile: pool = MT's test images (392 defective + 190 good, one group). Truth = the detection loader's
  boxes (connected components of the defect masks; good images have none). Scored (a) by mutual scoring and (b) by
  an anomaly model trained on MT's 762 good training images (skipped with a printed reason when training takes
  longer than --train-limit-s). Also (a) on every MT image (1344, 71 % good): a production-like defect rate.
- NEU-DET: all 1800 images, mutual scoring, timed (the issue's speed target: ~3000 images in about 10 minutes on 2
  cores); its VOC boxes give a second, class-agnostic precision / recall.

A pseudo box is a hit when it takes an unmatched true box at IoU >= 0.3 (engine.metrics.detection_match's greedy
rule, every box of the run, one class "anomaly"). Precision = hits / pseudo boxes, recall = true boxes found / true
boxes; images without truth (e.g. the 4 empty "uneven" masks) are left out of both.

    .venv/bin/python benchmarks/pseudo_box_quality.py [--out benchmarks/out/pseudo]
        [--parts mt_mutual,mt_all_mutual,mt_model,neu_mutual] [--note "what else ran on the machine"]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.anomaly_benchmark import machine_info, run_measured  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
IOU = 0.3
CLI = [sys.executable, "-m", "app.cli"]


def truth_boxes(root: Path) -> dict[Path, np.ndarray]:
    """Resolved image path -> [T, 4] true boxes (every split) from the detection loader."""
    from engine.datasets.detection import load_detection_set

    data = load_detection_set(root)
    return {Path(s.image_path).resolve(): s.boxes for s in data.samples}


def quality(run: Path, truth: dict[Path, np.ndarray]) -> dict:
    from engine.detections import read_detections
    from engine.metrics.detection_match import match_image

    dets = read_detections(run)
    hits = n_boxes = found = n_truth = 0
    images_defective = images_defective_boxed = images_good = images_good_boxed = no_truth = 0
    for item in dets.items.values():
        gt = truth.get(Path(item.path).resolve())
        if gt is None:
            no_truth += 1
            continue
        m = match_image(gt, ["anomaly"] * len(gt), item.boxes, item.scores, item.classes, threshold=-np.inf,
                        iou=IOU)
        hits += m.n_hits
        n_boxes += len(item.boxes)
        found += int(m.found.sum())
        n_truth += len(gt)
        if len(gt):
            images_defective += 1
            images_defective_boxed += int(len(item.boxes) > 0)
        else:
            images_good += 1
            images_good_boxed += int(len(item.boxes) > 0)
    pool = json.loads((run / "pool.json").read_text())
    return {"precision": hits / n_boxes if n_boxes else None, "recall": found / n_truth if n_truth else None,
            "pseudo_boxes": n_boxes, "true_boxes": n_truth, "hits": hits,
            "defective_images_with_box": images_defective_boxed / images_defective if images_defective else None,
            "good_images_with_box": images_good_boxed / images_good if images_good else None,
            "n_defective": images_defective, "n_good": images_good, "no_truth": no_truth,
            "threshold": pool["threshold"], "n_images": len(pool["images"]), "job_seconds": pool["seconds"],
            "scoring": {k: v for k, v in pool.get("scoring", {}).items() if k != "config"}}


def pseudo_boxes(pool: list[Path], out: Path, *extra: str) -> tuple[float, Path]:
    wall, _, proc = run_measured([*CLI, "pseudo-boxes", "--pool", *map(str, pool), "--out", str(out), *extra])
    if proc.returncode != 0:
        raise RuntimeError(f"pseudo-boxes failed: {proc.stderr[-2000:]}")
    print(proc.stdout.strip(), flush=True)
    return wall, out


def train_model(out: Path, limit_s: float) -> tuple[float | None, str]:
    mt = SHARED / "magnetic_tile"
    cmd = [*CLI, "train", "anomaly", "--data", str(mt), "--category", "MT", "--out", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return None, f"training the anomaly model took longer than {limit_s:.0f} s (limit); (b) skipped"
    if proc.returncode != 0:
        return None, f"training failed: {proc.stderr.strip()[-500:]}"
    return time.perf_counter() - t0, proc.stdout.strip()


PARTS = ("mt_mutual", "mt_all_mutual", "mt_model", "neu_mutual")


def run_part(part: str, out: Path, args: argparse.Namespace) -> dict:
    mt_pool = [SHARED / "magnetic_tile" / "MT" / "test"]
    if part == "mt_mutual":
        wall, run = pseudo_boxes(mt_pool, out / part)
        return {"wall_s": round(wall, 1), **quality(run, truth_boxes(SHARED / "magnetic_tile"))}
    if part == "mt_all_mutual":
        # The same defects in a production-like pool: every MT image, 71 % of them good (mutual scoring assumes a
        # defect look is shared by few images; the test folder alone is 67 % defective). One folder of links = one
        # group; the links resolve to the originals, so the truth is found by path.
        mixed = out / "mt_all_pool"
        if mixed.exists():
            shutil.rmtree(mixed)
        mixed.mkdir()
        mt = SHARED / "magnetic_tile" / "MT"
        for image in sorted([*mt.glob("train/good/*"), *mt.glob("test/*/*")]):
            (mixed / f"{image.parent.parent.name}_{image.parent.name}_{image.name}").symlink_to(image.resolve())
        wall, run = pseudo_boxes([mixed], out / part)
        return {"wall_s": round(wall, 1), **quality(run, truth_boxes(SHARED / "magnetic_tile"))}
    if part == "mt_model":
        train_s, message = train_model(out / "mt_model", args.train_limit_s)
        if train_s is None:
            print(message, flush=True)
            return {"skipped": message}
        wall, run = pseudo_boxes(mt_pool, out / "mt_model_boxes", "--scorer", str(out / "mt_model"))
        return {"train_s": round(train_s, 1), "wall_s": round(wall, 1),
                **quality(run, truth_boxes(SHARED / "magnetic_tile"))}
    wall, run = pseudo_boxes([SHARED / "neu_det" / "images"], out / part)
    return {"wall_s": round(wall, 1), **quality(run, truth_boxes(SHARED / "neu_det"))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "pseudo"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--train-limit-s", type=float, default=600.0)
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="what to (re)run; the other parts' rows are kept from OUT/pseudo_box_quality.json")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (kept with each row)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown parts {unknown}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "pseudo_box_quality.json"
    results: dict = json.loads(store.read_text()) if store.is_file() else {}
    results.update({"machine": machine_info(), "iou": IOU})
    for part in parts:
        row = run_part(part, out, args)
        results[part] = {"date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note, **row}
        print(json.dumps(results[part]), flush=True)
        store.write_text(json.dumps(results, indent=2))
    write_results(Path(args.results), results)
    return 0


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_results(path: Path, r: dict) -> None:
    lines = [
        "### Pseudo boxes from anomaly maps (AGSSP rule) on ../shared/data",
        "",
        f"Machine: {r['machine']}.",
        "Command: `python benchmarks/pseudo_box_quality.py` (CLI defaults: margin 0.1, top-k 10 after NMS at IoU 0.8, "
        "mutual scoring with R = 32 references, EfficientNet-Lite0 stride-8/16 patch features at 224^2 area). "
        f"A pseudo box is a hit at IoU >= {r['iou']} with a true box (greedy, one class).",
    ]
    by_note: dict[str, list[str]] = {}
    for p in PARTS:
        if r.get(p) and r[p].get("note"):
            by_note.setdefault(r[p]["note"], []).append(p)
    lines += [f"{', '.join(parts)}: {note}" for note, parts in by_note.items()]
    lines += [
        "",
        "| pool | scorer | images | pseudo boxes | true boxes | precision | recall | defective images with a box "
        "| good images with a box | threshold | wall s | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("magnetic tile test (392 defective + 190 good)", "mutual", r.get("mt_mutual")),
            ("magnetic tile test (392 defective + 190 good)", "anomaly model (MT train/good)", r.get("mt_model")),
            ("magnetic tile, every image (392 defective + 952 good)", "mutual", r.get("mt_all_mutual")),
            ("NEU-DET, all 1800 (every image defective)", "mutual", r.get("neu_mutual"))]
    for pool, scorer, q in rows:
        if not q:
            continue
        if "skipped" in q:
            lines.append(f"| {pool} | {scorer} | skipped: {q['skipped']} | | | | | | | | | {q.get('date', '')} |")
            continue
        lines.append(f"| {pool} | {scorer} | {q['n_images']} | {q['pseudo_boxes']} | {q['true_boxes']} "
                     f"| {_f(q['precision'])} | {_f(q['recall'])} | {_f(q['defective_images_with_box'], 2)} "
                     f"| {_f(q['good_images_with_box'], 2)} | {q['threshold']:.3f} | {q['wall_s']:.0f} "
                     f"| {q.get('date', '')} |")
    lines.append("")
    neu = r.get("neu_mutual")
    if neu:
        sc = neu["scoring"]
        per_image = neu["wall_s"] / neu["n_images"]
        lines.append(f"- Mutual scoring speed, NEU-DET 1800 images: {neu['wall_s']:.0f} s wall for the whole CLI run "
                     f"(features {sc.get('features_s')} s, {sc.get('n_pairs')} image pairs {sc.get('pairs_s')} s, "
                     f"{sc.get('torch_threads')} torch threads); {per_image * 1000:.0f} ms per image, so about "
                     f"{per_image * 3000 / 60:.1f} min for a 3000-image pool (target: about 10 min).")
    model = r.get("mt_model")
    if model and "train_s" in model:
        lines.append(f"- The anomaly model of (b): `defectscope train anomaly` on MT's good training images, "
                     f"{model['train_s']:.0f} s.")
    section = "\n".join(lines) + "\n"
    replace_section(path, "pseudo-box-quality", section)


if __name__ == "__main__":
    sys.exit(main())
