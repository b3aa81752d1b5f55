"""Open-set detection (issue 17) on NEU-DET: classes named only by text, or shown by a few example boxes.

The protocol: three folds of 4 known / 2 novel classes (each class novel once). Per fold, through the CLI as a
user runs it, `defectscope train open-detector --data neu_det --classes KNOWN --prompts resources/prompts/neu_det.json`
(the published split; images showing a novel class are left out of training by the job). Then, on the published
test split with all six classes asked for at once (they compete for every region), through the torch-free runtime:
  - text: every class by its phrasings -> AP@0.5 per class (novel: from text alone);
  - name swap: the two novel classes' phrasings exchanged -> their AP@0.5 must fall, else the text does nothing;
  - visual prompts: the known classes by text, each novel class by a prototype of 1 or 5 boxes drawn from training
    images (several random draws) -> novel AP@0.5;
  - class-agnostic recall: ground-truth boxes matched (IoU >= 0.5) by any detection, whatever its class.
Known-class AP@0.5 is compared with the closed-set detector of the detector benchmark (all six classes trained),
and the five-shot novel AP@0.5 with that detector's AP@0.5 of the same classes.

Finished folds are kept in benchmarks/open_set_results.json; the RESULTS.md section is rebuilt from all of them.

    .venv/bin/python benchmarks/open_set_benchmark.py [--folds 0,1,2] [--draws 3] [--epochs N]
        [--out benchmarks/out/open_set]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.anomaly_benchmark import machine_info, run_step  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

NEU = REPO.parent / "shared" / "data" / "neu_det"
PROMPTS = REPO / "resources" / "prompts" / "neu_det.json"
STORE = REPO / "benchmarks" / "open_set_results.json"
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
FOLDS = (("crazing", "inclusion"), ("patches", "pitted_surface"), ("rolled-in_scale", "scratches"))  # novel pairs
SHOTS = (1, 5)
TARGET_TEXT_OVER_SWAP = 0.10  # novel AP@0.5 from text at least this far above the name-swap control
TARGET_FIVE_SHOT_SHARE = 0.60  # five-shot novel AP@0.5 >= this share of the closed-set AP@0.5 of those classes
CLI = [sys.executable, "-m", "app.cli"]


def text_encoder(out: Path) -> Path:
    """One export of the text encoder, bundled into every fold's run (each run copies it)."""
    from engine.jobs import run_job

    folder = out / "text_encoder"
    if not (folder / "text_encoder.json").is_file():
        run_job("export_text_encoder", {"out": str(folder)})
    return folder


def train_fold(out: Path, fold: int, epochs: int | None, before: dict | None) -> tuple[Path, float, float]:
    novel = FOLDS[fold]
    run = out / f"fold{fold}"
    if (run / "open_detector.json").is_file():
        return run, (before or {}).get("train_s", 0.0), (before or {}).get("peak_gb", 0.0)
    known = [c for c in CLASSES if c not in novel]
    cmd = [*CLI, "train", "open-detector", "--data", str(NEU), "--classes", ",".join(known), "--prompts",
           str(PROMPTS), "--text-encoder", str(text_encoder(out)), "--out", str(run)]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    wall, peak = run_step(cmd, f"train fold {fold} (novel: {', '.join(novel)})")
    return run, wall, peak


def _agnostic_recall(gt_boxes: list[np.ndarray], pred_boxes: list[np.ndarray]) -> float | None:
    from engine.metrics.detection_match import box_iou

    n = hit = 0
    for truth, boxes in zip(gt_boxes, pred_boxes, strict=True):
        n += len(truth)
        if len(truth) and len(boxes):
            hit += int((box_iou(truth, boxes) >= 0.5).any(1).sum())
    return hit / n if n else None


def evaluate_fold(run: Path, fold: int, draws: int) -> dict:
    """Every query set on every test image (one read per image), then AP@0.5 per class per query set."""
    from engine.class_prompts import read_prompts
    from engine.datasets.detection import load_detection_set
    from engine.datasets.imageio import read_image
    from engine.metrics.detection import detection_metrics
    from engine.runtime.open_detector import OpenDetector

    novel = FOLDS[fold]
    detector = OpenDetector(run, "cpu")
    data = load_detection_set(NEU)
    names = list(data.classes)
    prompts = read_prompts(PROMPTS)
    text = {c: prompts[c] for c in names}
    swapped = {**text, novel[0]: text[novel[1]], novel[1]: text[novel[0]]}
    known_text = {c: text[c] for c in names if c not in novel}
    asked = {"text": detector.text_queries(text), "swap": detector.text_queries(swapped)}
    train = data.select("train")
    shots_used: dict[str, list[str]] = {}
    for k in SHOTS:
        for d in range(draws):
            rng = np.random.default_rng(1000 * fold + 10 * k + d)
            examples = {}
            for c in novel:
                ci = names.index(c)
                holders = [s for s in train if (s.labels == ci).any()]
                picked = [holders[i] for i in rng.choice(len(holders), k, replace=False)]
                examples[c] = [(read_image(s.image_path), s.boxes[s.labels == ci][int(rng.integers((s.labels == ci)
                                                                                                 .sum()))])
                               for s in picked]
                shots_used[f"{k}shot_{d}_{c}"] = [s.image_path.name for s in picked]
            queries = detector.text_queries(known_text) + detector.prototype_queries(examples)
            asked[f"{k}shot_{d}"] = queries
    runners = {key: detector.ask(q) for key, q in asked.items()}
    tests = data.select("test")
    gt = [(s.boxes, s.labels) for s in tests]
    preds: dict[str, list] = {key: [] for key in runners}
    t0 = time.monotonic()
    for s in tests:
        image = read_image(s.image_path)
        for key, runner in runners.items():
            boxes, scores, classes = runner.detect(image)
            order = [runner.classes[int(c)] for c in classes]  # the query's order -> the dataset's class indices
            preds[key].append((boxes, scores, np.array([names.index(n) for n in order], np.int64)))
    per_pass_ms = (time.monotonic() - t0) * 1000 / max(1, len(tests) * len(runners))
    ap = {key: detection_metrics(gt, p, names)["ap50_per_class"] for key, p in preds.items()}
    novel_mask = [np.isin(s.labels, [names.index(c) for c in novel]) for s in tests]
    recall = {
        "novel": _agnostic_recall([s.boxes[m] for s, m in zip(tests, novel_mask, strict=True)],
                                  [p[0] for p in preds["text"]]),
        "known": _agnostic_recall([s.boxes[~m] for s, m in zip(tests, novel_mask, strict=True)],
                                  [p[0] for p in preds["text"]]),
    }
    shot = {str(k): {c: statistics.fmean(ap[f"{k}shot_{d}"][c] for d in range(draws)) for c in novel}
            for k in SHOTS}
    shot_spread = {str(k): {c: (statistics.stdev(ap[f"{k}shot_{d}"][c] for d in range(draws)) if draws > 1 else 0.0)
                       for c in novel} for k in SHOTS}
    meta = json.loads((run / "open_detector.json").read_text())
    return {"fold": fold, "novel": list(novel), "known": [c for c in names if c not in novel],
            "ap50_text": ap["text"], "ap50_swap": ap["swap"], "ap50_shots": shot, "ap50_shots_spread": shot_spread,
            "draws": draws, "shots_used": shots_used, "agnostic_recall": recall, "n_test": len(tests),
            "ms_per_image_and_query_set": round(per_pass_ms, 2),
            "n_train_images": meta["training"]["n_train_images"], "epochs": meta["training"]["epochs_run"],
            "validation_map50_known": meta["validation"]["map50"],
            "measured": time.strftime("%Y-%m-%d"), "machine": machine_info()}


def closed_set_reference() -> dict | None:
    store = REPO / "benchmarks" / "detector_results.json"
    row = json.loads(store.read_text())["rows"].get("neu_det") if store.is_file() else None
    return row


def _mean(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.fmean(got) if got else None


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_results(path: Path, stored: dict) -> None:
    folds = [stored["folds"][k] for k in sorted(stored.get("folds", {}))]
    closed = closed_set_reference()
    closed_ap = (closed or {}).get("ap50_per_class") or {}
    machines = sorted({f["machine"] for f in folds}) or [machine_info()]
    lines = [f"### Open-set detection (issue 17) on NEU-DET ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {'; '.join(machines)}.",
             "Command: `python benchmarks/open_set_benchmark.py` (per fold `train open-detector --data neu_det "
             "--classes KNOWN --prompts resources/prompts/neu_det.json`, epochs per fold below (the job's default "
             "is 60, the closed-set reference's schedule); images showing a novel class left out of training; test: "
             "the published test split, all six classes asked for "
             "at once). Novel AP@0.5 from text with the six classes' phrasings; name swap: the two novel classes' "
             "phrasings exchanged; k-shot: the known classes by text, each novel class by a prototype of k boxes "
             "from training images (mean over draws); closed set: the detector benchmark's NEU-DET run (all six "
             "classes trained).", "",
             "| fold | novel | novel AP@0.5 text | name swap | 1-shot | 5-shot | closed set | known AP@0.5 | "
             "closed set known | agnostic recall novel / known |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for f in folds:
        novel, known = f["novel"], f["known"]
        text = _mean([f["ap50_text"][c] for c in novel])
        swap = _mean([f["ap50_swap"][c] for c in novel])
        one = _mean([f["ap50_shots"]["1"][c] for c in novel])
        five = _mean([f["ap50_shots"]["5"][c] for c in novel])
        closed_novel = _mean([closed_ap.get(c) for c in novel])
        known_ap = _mean([f["ap50_text"][c] for c in known])
        closed_known = _mean([closed_ap.get(c) for c in known])
        rows.append((text, swap, five, closed_novel))
        lines.append(f"| {f['fold']} | {', '.join(novel)} | {_f(text)} | {_f(swap)} | {_f(one)} | {_f(five)} | "
                     f"{_f(closed_novel)} | {_f(known_ap)} | {_f(closed_known)} | "
                     f"{_f(f['agnostic_recall']['novel'])} / {_f(f['agnostic_recall']['known'])} |")
    lines.append("")
    for f in folds:
        per = ", ".join(f"{c} text {_f(f['ap50_text'][c])} / swap {_f(f['ap50_swap'][c])} / 1-shot "
                        f"{_f(f['ap50_shots']['1'][c])} ± {f['ap50_shots_spread']['1'][c]:.3f} / 5-shot "
                        f"{_f(f['ap50_shots']['5'][c])} ± {f['ap50_shots_spread']['5'][c]:.3f}" for c in f["novel"])
        lines.append(f"- Fold {f['fold']} per novel class: {per} ({f['draws']} draws of the shots; "
                     f"{f['n_train_images']} training images, {f['epochs']} epochs; "
                     f"{f['ms_per_image_and_query_set']} ms per image and query set).")
    if rows:
        text, swap = _mean([r[0] for r in rows]), _mean([r[1] for r in rows])
        five, closed_novel = _mean([r[2] for r in rows]), _mean([r[3] for r in rows])
        if text is not None and swap is not None:
            met = text - swap >= TARGET_TEXT_OVER_SWAP
            lines.append(f"- Novel AP@0.5 from text {text:.3f} vs name swap {swap:.3f}: {(text - swap) * 100:+.1f} "
                         f"points (target >= +{TARGET_TEXT_OVER_SWAP * 100:.0f}: {'met' if met else 'NOT met'}), "
                         f"over {len(rows)} of 3 folds.")
        if five is not None and closed_novel:
            share = five / closed_novel
            lines.append(f"- Five-shot novel AP@0.5 {five:.3f} = {share:.0%} of the closed-set AP@0.5 of the same "
                         f"classes ({closed_novel:.3f}; target >= {TARGET_FIVE_SHOT_SHARE:.0%}: "
                         f"{'met' if share >= TARGET_FIVE_SHOT_SHARE else 'NOT met'}), over {len(rows)} of 3 folds.")
    if closed:
        lines.append(f"- Closed-set reference: {closed.get('measured')}, mAP@0.5 {closed.get('map50')} "
                     f"({closed.get('note') or 'detector benchmark'}).")
    replace_section(path, "open-set-benchmark", "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--draws", type=int, default=3, help="random draws of the example boxes per shot count")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the job's)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "open_set"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--store", default=str(STORE), help="where finished folds are kept")
    args = ap.parse_args()
    if not NEU.is_dir():
        print(f"NEU-DET not found at {NEU}", file=sys.stderr)
        return 2
    out = Path(args.out)
    store = Path(args.store)
    stored = json.loads(store.read_text()) if store.is_file() else {}
    stored.setdefault("folds", {})
    for fold in (int(f) for f in args.folds.split(",")):
        before = stored["folds"].get(str(fold))
        run, wall, peak = train_fold(out, fold, args.epochs, before)
        row = evaluate_fold(run, fold, args.draws)
        row.update(train_s=round(wall, 1), peak_gb=round(peak, 2))
        stored["folds"][str(fold)] = row
        store.write_text(json.dumps(stored, indent=2) + "\n")
        print(json.dumps({k: row[k] for k in ("fold", "novel", "ap50_text", "ap50_swap", "ap50_shots",
                                              "agnostic_recall")}), flush=True)
        write_results(Path(args.results), stored)
    write_results(Path(args.results), stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
