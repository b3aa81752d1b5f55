"""Do synthetic defects help a downstream model? (issue 18) Magnetic tile, k real defective images per type.

Per training seed and draw of the k real images (shots seed), through the CLI as a user runs it:
  (a) real:        `train segmentation --shots-per-type k` for the same number of epochs as (c) sees, i.e.
                   steps x n_real / (n_real + n_synthetic) (the k real images alone, not oversampled);
  (b) oversampled: the k real images for the full number of steps (the same steps as (c) and (d));
  (c) procedural:  the k real images + `synthesize --method procedural` from the same k donors (--extra);
  (d) diffusion:   the k real images + `sample-generator` of a Defect-Gen generator trained (`train generator`)
                   on the same k images per type: generated defect windows pasted on the good parts.
Every condition of one draw is measured on the same held-out images (the draw's rest: engine.datasets.segmentation),
so the differences are paired. mIoU = mean IoU over the defect types; per-type IoU; spread over seeds x draws.

Sample quality per draw and synthesis method (trainers.defectgen.quality): mask alignment (vs the real masks'),
diversity and feature-space precision / recall against the draw's held-out real defects (the generator never saw
them); with the generator's training and sampling time.

Finished cells are kept in benchmarks/synthesis_results.json; the RESULTS.md section is rebuilt from all of them.

    .venv/bin/python benchmarks/synthesis_benchmark.py [--seeds 0,1,2] [--draws 0,1,2] [--shots 5]
        [--conditions real,oversampled,procedural,diffusion] [--synthetic-per-type 40] [--steps 600]
        [--generator-steps 3000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.anomaly_benchmark import machine_info, run_step  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "magnetic_tile"
STORE = REPO / "benchmarks" / "synthesis_results.json"
CONDITIONS = ("real", "oversampled", "procedural", "diffusion")
GOOD_IMAGES = 10  # train segmentation's default: real good images in every condition
TARGET_POINTS = 3.0  # (d) must beat (a) and (b) by this many mIoU points, and beat (c)
CLI = [sys.executable, "-m", "app.cli"]


def _cell(stored: dict, key: str) -> dict | None:
    return stored.get("cells", {}).get(key)


def generator_dir(out: Path, draw: int) -> Path:
    return out / f"generator_d{draw}"


def synthetic_set(out: Path, condition: str, draw: int, args: argparse.Namespace) -> Path:
    """The draw's synthetic set of `condition` (procedural or diffusion), made once and reused by every seed."""
    if condition == "procedural":
        synthetic = out / f"synthetic_d{draw}"
        if not (synthetic / "synthetic.json").is_file():
            run_step([*CLI, "synthesize", "--data", str(DATA), "--out", str(synthetic), "--count-per-type",
                      str(args.synthetic_per_type), "--shots-per-type", str(args.shots), "--shots-seed", str(draw),
                      "--seed", str(draw)], f"synthesize (draw {draw})")
        return synthetic
    gen, synthetic = generator_dir(out, draw), out / f"diffusion_d{draw}"
    if not (gen / "generator.json").is_file():
        run_step([*CLI, "train", "generator", "--data", str(DATA), "--out", str(gen), "--shots-per-type",
                  str(args.shots), "--shots-seed", str(draw), "--steps", str(args.generator_steps), "--device", "cpu"],
                 f"train generator (draw {draw})")
    if not (synthetic / "synthetic.json").is_file():
        run_step([*CLI, "sample-generator", "--generator", str(gen), "--out", str(synthetic), "--count-per-type",
                  str(args.synthetic_per_type), "--seed", str(draw), "--device", "cpu"], f"sample generator (draw {draw})")
    return synthetic


def quality_row(out: Path, condition: str, draw: int, args: argparse.Namespace) -> dict:
    """Sample quality of the draw's synthetic set against the draw's held-out real defects."""
    from engine.datasets.imageio import read_image, read_mask
    from engine.datasets.segmentation import load_segmentation_split
    from engine.synthesis.synthetic_set import read_manifest
    from trainers.defectgen.quality import quality_report

    def pair(image_path: Path, mask_path: Path) -> tuple:
        image = read_image(image_path)
        return image, read_mask(mask_path, image.shape[:2])

    split = load_segmentation_split(DATA, shots_per_type=args.shots, shots_seed=draw, good_images=0)
    real = [pair(s.image_path, s.mask_path) for s in split.held_out if s.label and s.mask_path is not None]
    folder = synthetic_set(out, condition, draw, args)
    manifest = read_manifest(folder)
    synthetic = [pair(folder / r["image"], folder / r["mask"]) for r in manifest["samples"]]
    row = {"condition": condition, "draw": draw, **quality_report(real, synthetic),
           "measured": time.strftime("%Y-%m-%d"), "machine": machine_info()}
    if condition == "diffusion":
        meta = json.loads((generator_dir(out, draw) / "generator.json").read_text())
        tr = meta["training"]
        row.update(generator_train_s=tr["seconds_total"], generator_steps=tr["steps"],
                   sampling_s=round(manifest["sampling"]["seconds_sampling"], 1),
                   sampled=manifest["sampling"]["drawn"], kept=len(manifest["samples"]))
    return row


def run_cell(out: Path, condition: str, seed: int, draw: int, args: argparse.Namespace) -> dict:
    run = out / f"{condition}_s{seed}_d{draw}"
    base = [*CLI, "train", "segmentation", "--data", str(DATA), "--shots-per-type", str(args.shots),
            "--shots-seed", str(draw), "--seed", str(seed), "--good-images", str(GOOD_IMAGES), "--device", "cpu"]
    n_types = 5
    n_real = args.shots * n_types + GOOD_IMAGES
    n_synth = args.synthetic_per_type * n_types
    wall = peak = 0.0
    if condition == "real":
        steps = max(1, round(args.steps * n_real / (n_real + n_synth)))
        cmd = [*base, "--steps", str(steps)]
    elif condition == "oversampled":
        steps, cmd = args.steps, [*base, "--steps", str(args.steps)]
    else:
        synthetic = synthetic_set(out, condition, draw, args)
        steps, cmd = args.steps, [*base, "--steps", str(args.steps), "--extra", str(synthetic)]
    if not (run / "defect_segmentation.json").is_file():
        w, p = run_step([*cmd, "--out", str(run)], f"{condition} seed {seed} draw {draw}")
        wall, peak = wall + w, max(peak, p)
    meta = json.loads((run / "defect_segmentation.json").read_text())
    val, tr = meta["validation"], meta["training"]
    return {"condition": condition, "seed": seed, "draw": draw, "steps": steps, "miou": val["miou"],
            "iou_per_class": val["iou_per_class"], "n_held_out": val.get("n_images"),
            "n_train_images": tr["n_dataset_images"] + tr["n_extra_images"], "train_s": round(wall, 1),
            "peak_gb": round(peak, 2), "measured": time.strftime("%Y-%m-%d"), "machine": machine_info()}


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f} (n={len(values)})"


def write_results(path: Path, stored: dict, shots: int) -> None:
    cells = list(stored.get("cells", {}).values())
    machines = sorted({c["machine"] for c in cells}) or [machine_info()]
    classes = sorted({k for c in cells for k in c["iou_per_class"]})
    lines = [f"### Synthetic defects for a downstream model (issue 18) on magnetic tile ({time.strftime('%Y-%m-%d')})",
             "", f"Machine: {'; '.join(machines)}.",
             f"Command: `python benchmarks/synthesis_benchmark.py` ({shots} real defective images per type, "
             f"{GOOD_IMAGES} good; held out: the rest of magnetic tile's defects and its test good images, the same "
             "for every condition of a draw). (a) real: the k images for as many epochs as (c); (b) oversampled: "
             "the k images for the full number of steps; (c) procedural: + cut-paste synthetic defects from the "
             "same k donors; (d) diffusion: + the Defect-Gen generator's samples.", "",
             "| condition | mIoU (mean ± sd over seeds x draws) | " + " | ".join(classes) + " | train s |",
             "|---|---|" + "---|" * len(classes) + "---|"]
    by_condition: dict[str, list[dict]] = {}
    for c in cells:
        by_condition.setdefault(c["condition"], []).append(c)
    for condition in CONDITIONS:
        rows = by_condition.get(condition, [])
        if not rows:
            lines.append(f"| {condition} | not run |" + " |" * len(classes) + " |")
            continue
        per_class = [statistics.fmean(r["iou_per_class"][k] for r in rows if r["iou_per_class"].get(k) is not None)
                     for k in classes]
        lines.append(f"| {condition} | {_stats([r['miou'] for r in rows])} | "
                     + " | ".join(f"{v:.3f}" for v in per_class)
                     + f" | {statistics.fmean(r['train_s'] for r in rows):.0f} |")
    paired = {}
    for c in cells:
        paired.setdefault((c["seed"], c["draw"]), {})[c["condition"]] = c["miou"]
    for a, b in (("procedural", "real"), ("procedural", "oversampled"), ("diffusion", "real"),
                 ("diffusion", "oversampled"), ("diffusion", "procedural")):
        diffs = [(v[a] - v[b]) * 100 for v in paired.values() if a in v and b in v]
        if diffs:
            lines.append(f"- Paired {a} - {b}: {statistics.fmean(diffs):+.1f} mIoU points "
                         f"(per cell {', '.join(f'{d:+.1f}' for d in diffs)}).")
    full = [v for v in paired.values() if all(c in v for c in CONDITIONS)]
    if full:
        mean = {c: statistics.fmean(v[c] for v in full) * 100 for c in CONDITIONS}
        met = (mean["diffusion"] >= max(mean["real"], mean["oversampled"]) + TARGET_POINTS
               and mean["diffusion"] > mean["procedural"])
        lines.append(f"- Target ((d) beats (a) and (b) by >= {TARGET_POINTS:.0f} mIoU points and beats (c)), over "
                     f"the {len(full)} cells with all four: (d) {mean['diffusion']:.1f} vs (a) {mean['real']:.1f}, "
                     f"(b) {mean['oversampled']:.1f}, (c) {mean['procedural']:.1f}: **{'met' if met else 'NOT met'}**.")
    else:
        lines.append(f"- Target ((d) beats (a) and (b) by >= {TARGET_POINTS:.0f} mIoU points and beats (c)): not "
                     "measured yet (no cell with all four conditions).")
    for key, old in sorted(stored.get("superseded", {}).items()):
        lines.append(f"- Superseded ({key}): mIoU {old['cell']['miou']:.3f}, not in the table: {old['why']}.")
    quality = stored.get("quality", {})
    if quality:
        lines += ["", "Sample quality against the draw's held-out real defects (trainers/defectgen/quality.py; "
                  "features: ImageNet EfficientNet-Lite0 on a window around each defect):", "",
                  "| set | draw | masks aligned (synthetic / real) | check | diversity (synthetic / real) | "
                  "precision | recall | generator train s (steps large / small) | sampling s (kept / drawn) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in sorted(quality):
            q = quality[key]
            gen = (f"{q['generator_train_s']:.0f} ({q['generator_steps']['large']} / {q['generator_steps']['small']}) | "
                   f"{q['sampling_s']:.0f} ({q['kept']} / {q['sampled']})"
                   if "generator_train_s" in q else "- | -")
            lines.append(f"| {q['condition']} | {q['draw']} | {q['aligned_share_synthetic']:.2f} / "
                         f"{q['aligned_share_real']:.2f} | {'pass' if q['alignment_check_passed'] else 'FAIL'} | "
                         f"{q['diversity_synthetic']:.3f} / {q['diversity_real']:.3f} | {q['precision']:.2f} | "
                         f"{q['recall']:.2f} | {gen} |")
    replace_section(path, "synthesis-benchmark", "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--draws", default="0,1,2", help="shots seeds: draws of the k real images")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--conditions", default="real,oversampled,procedural,diffusion")
    ap.add_argument("--synthetic-per-type", type=int, default=40)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rerun", action="store_true", help="measure cells already in the store again")
    ap.add_argument("--generator-steps", type=int, default=3000, help="training steps of each generator model")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "synthesis"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--store", default=str(STORE))
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"magnetic tile not found at {DATA}", file=sys.stderr)
        return 2
    out, store = Path(args.out), Path(args.store)
    out.mkdir(parents=True, exist_ok=True)
    stored = json.loads(store.read_text()) if store.is_file() else {}
    stored.setdefault("cells", {})
    stored.setdefault("quality", {})
    for draw in (int(d) for d in args.draws.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            for condition in args.conditions.split(","):
                if condition not in CONDITIONS:
                    print(f"unknown condition {condition!r} (one of {', '.join(CONDITIONS)})", file=sys.stderr)
                    return 2
                if condition in ("procedural", "diffusion") and f"{condition}_d{draw}" not in stored["quality"]:
                    stored["quality"][f"{condition}_d{draw}"] = quality_row(out, condition, draw, args)
                key = f"{condition}_s{seed}_d{draw}_k{args.shots}"
                if key in stored["cells"] and not args.rerun:
                    continue  # measured before (its run folder may be gone with that machine)
                row = run_cell(out, condition, seed, draw, args)
                stored["cells"][key] = row
                store.write_text(json.dumps(stored, indent=2) + "\n")
                print(json.dumps({k: row[k] for k in ("condition", "seed", "draw", "miou")}), flush=True)
                write_results(Path(args.results), stored, args.shots)
    write_results(Path(args.results), stored, args.shots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
