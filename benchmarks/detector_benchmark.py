"""Train and evaluate DefectScope's box detector on the real sets in ../shared/data; write benchmarks/RESULTS.md.

Runs the CLI contract as a user would (`defectscope train detector`, `defectscope eval`) in subprocesses, measuring
wall time and peak resident memory of each training run; then the ONNX latency of the trained detector through the
torch-free runtime on one real 200 x 200 NEU-DET image and the same image resized to 640 x 640 (the runtime's own
tiling included: a 640-px image is larger than twice the model's 256-px input, so it is also searched tile by tile).

    .venv/bin/python benchmarks/detector_benchmark.py [--sets neu_det,magnetic_tile] [--out benchmarks/out/detector]
        [--reuse]   # keep a run folder that holds timing.json (an earlier training of the same command)

Torch vs ONNX box parity is measured by the exporter before it publishes (detector.json "parity"), reported here.
Each set's row (and the latency figures, with NEU-DET) is kept in benchmarks/detector_results.json, so running one
set rewrites its own row and the table still shows the others with the date they were measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.anomaly_benchmark import machine_info, run_measured  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SETS = {
    "neu_det": {"root": "neu_det", "epochs": None, "targets": {"map50": 0.78, "map50_95": 0.42}},
    # Magnetic tile boxes come from the defect masks (connected components); two thirds of its training images are
    # good (no box), so the same schedule sees fewer boxes per epoch: the default epochs are kept.
    "magnetic_tile": {"root": "magnetic_tile", "epochs": None, "targets": {}},
}
STORE = REPO / "benchmarks" / "detector_results.json"
TARGET_TRAIN_S = 45 * 60
TARGET_LATENCY_MS = {200: 20.0, 640: 80.0}


def latency(model_dir: Path, image: np.ndarray, repeats: int = 50) -> dict:
    """Median ms per image of Detector.detect (the one inference path), after two warm-up runs; for a tiled image
    also with its passes one after another (one pass worker), side by side, to show what running them at once buys."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.runtime import detector as runtime
    from engine.runtime.detector import Detector

    det = Detector(model_dir, "cpu")

    def measure() -> list[float]:
        for _ in range(2):
            det.detect(image)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            det.detect(image)
            times.append((time.perf_counter() - t0) * 1000)
        return times

    times = measure()
    out = {"median_ms": round(float(np.median(times)), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
           "tiled": det.needs_tiles(*image.shape[:2]), "provider": det.provider, "model": str(model_dir),
           "measured": time.strftime("%Y-%m-%d"), "machine": machine_info()}
    if out["tiled"]:
        shared = runtime._passes()
        runtime._pass_pool = ThreadPoolExecutor(max_workers=1)
        try:
            out["sequential_median_ms"] = round(float(np.median(measure())), 2)
        finally:
            runtime._pass_pool = shared
    return out


def latencies(run_dir: Path) -> dict[str, dict]:
    image = neu_image()
    return {"200": latency(run_dir, cv2.resize(image, (200, 200), interpolation=cv2.INTER_AREA)),
            "640": latency(run_dir, cv2.resize(image, (640, 640), interpolation=cv2.INTER_LINEAR))}


def neu_image() -> np.ndarray:
    from engine.datasets.imageio import read_image

    first = sorted((SHARED / "neu_det" / "images").rglob("*.jpg"))[0]
    return read_image(first)


def bench_set(name: str, out: Path, reuse: bool) -> dict:
    spec = SETS[name]
    data = str(SHARED / spec["root"])
    run_dir = out / name
    timing_file = run_dir / "timing.json"
    cli = [sys.executable, "-m", "app.cli"]
    if not (reuse and timing_file.is_file() and (run_dir / "detector.json").is_file()):
        cmd = [*cli, "train", "detector", "--data", data, "--out", str(run_dir)]
        if spec["epochs"]:
            cmd += ["--epochs", str(spec["epochs"])]
        wall, peak, proc = run_measured(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"training {name} failed:\n{proc.stderr[-3000:]}")
        timing_file.write_text(json.dumps({"train_s": round(wall, 1), "peak_gb": round(peak, 2),
                                           "command": " ".join(cmd[3:])}))
    timing = json.loads(timing_file.read_text())
    report = run_dir / "eval_report.json"
    _, _, ev = run_measured([*cli, "eval", "--model", str(run_dir), "--data", data, "--report", str(report)])
    if ev.returncode != 0:
        raise SystemExit(f"evaluating {name} failed:\n{ev.stderr[-3000:]}")
    r = json.loads(report.read_text())
    meta = json.loads((run_dir / "detector.json").read_text())
    return {"set": name, "measured": time.strftime("%Y-%m-%d"), "machine": machine_info(), **timing, **{k: r[k] for k in ("map50", "map50_95", "ap50_per_class", "n_test",
                                                         "n_truth_boxes", "latency_ms", "provider")},
            "confusion_matrix": r.get("confusion_matrix"), "parity": meta.get("parity"),
            "training": meta.get("training"), "architecture": meta.get("architecture"), "targets": spec["targets"],
            "run_dir": str(run_dir)}


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_results(path: Path, rows: list[dict], lat: dict) -> None:
    machines = sorted({r.get("machine") or machine_info() for r in rows})
    lines = [f"### Box detector (issue 15) on ../shared/data ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {'; '.join(machines)}.",
             "Command: `python benchmarks/detector_benchmark.py` (`defectscope train detector --data ROOT --out RUN` "
             "with the job's defaults, then `defectscope eval`). Splits: NEU-DET's published 70/10/20 split "
             "(engine/datasets/splits/neu_det_*.txt); magnetic tile's boxes are the connected components of its "
             "defect masks, on the same stable split rule. mAP is pycocotools' COCO mAP on the test split.", "",
             "| set | measured | train images | test images | test boxes | mAP@0.5 | mAP@[.5:.95] | train min "
             "| peak GB | eval latency ms | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        targets = ", ".join(f"{k} >= {v} {'met' if (r[k] or 0) >= v else 'NOT met'}"
                            for k, v in r["targets"].items()) or "reported"
        n_train = (r.get("training") or {}).get("n_train_images", "?")
        lines.append(f"| {r['set']} | {r.get('measured', '?')} | {n_train} | {r['n_test']} | {r['n_truth_boxes']} | {_f(r['map50'])} "
                     f"| {_f(r['map50_95'])} | {r['train_s'] / 60:.1f} | {r['peak_gb']:.2f} | {r['latency_ms']:.1f} "
                     f"| {targets} |")
    lines.append("")
    for r in rows:
        per = ", ".join(f"{k} {_f(v)}" for k, v in r["ap50_per_class"].items())
        lines.append(f"- {r['set']} AP@0.5 per class: {per}")
    worst_train = max(r["train_s"] for r in rows if r["set"] == "neu_det") if any(
        r["set"] == "neu_det" for r in rows) else None
    if worst_train is not None:
        lines.append(f"- NEU-DET training: {worst_train / 60:.1f} min wall, process start, feature cache, validation "
                     f"and ONNX export with its parity check included (target <= {TARGET_TRAIN_S // 60} min): "
                     f"{'met' if worst_train <= TARGET_TRAIN_S else 'NOT met'}.")
    lines += [f"- {r['set']}: {r['note']}" for r in rows if r.get("note")]
    for size, m in lat.items():
        target = TARGET_LATENCY_MS[size]
        side = (f"; the same passes one after another: {m['sequential_median_ms']:.1f} ms"
                if "sequential_median_ms" in m else "")
        where = f", measured {m['measured']} on {m['machine']} with {m['model']}" if "model" in m else ""
        where += f" ({m['note']})" if m.get("note") else ""
        lines.append(f"- ONNX latency, {size} x {size} image through the runtime ({m['provider']}"
                     f"{', tiled: the whole image and its tiles, one pass per core at a time' if m['tiled'] else ''}): "
                     f"median {m['median_ms']:.1f} ms, p90 {m['p90_ms']:.1f} ms{side} "
                     f"(target <= {target:.0f} ms): {'met' if m['median_ms'] <= target else 'NOT met'}{where}.")
    for r in rows:
        p = r.get("parity") or {}
        if p:
            lines.append(f"- {r['set']} torch vs ONNX parity on raw images before publishing: "
                         + ", ".join(f"{k} {v}" for k, v in p.items() if not isinstance(v, (list, dict))))
    replace_section(path, "detector-benchmark", "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "detector"))
    ap.add_argument("--reuse", action="store_true", help="keep run folders that hold timing.json")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--latency-model", default="", help="measure the latency rows with this detector run folder "
                                                         "(same architecture as the NEU-DET one) without training")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile (kept with each row)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    out = Path(args.out)
    stored = json.loads(STORE.read_text()) if STORE.is_file() else {"rows": {}, "latency": {}}
    # --sets "" re-renders the section from the stored rows without training.
    for name in [n for n in args.sets.split(",") if n]:
        row = bench_set(name, out, args.reuse)
        row["note"] = args.note
        print(json.dumps({k: v for k, v in row.items() if k not in ("training", "architecture")}), flush=True)
        stored["rows"][name] = {k: v for k, v in row.items() if k not in ("architecture", "run_dir")}
        if name == "neu_det":
            stored["latency"] = latencies(Path(row["run_dir"]))
            print(json.dumps(stored["latency"]), flush=True)
        STORE.write_text(json.dumps(stored, indent=2) + "\n")
    if args.latency_model:
        stored["latency"] = {k: {**v, "note": args.note} for k, v in latencies(Path(args.latency_model)).items()}
        print(json.dumps(stored["latency"]), flush=True)
        STORE.write_text(json.dumps(stored, indent=2) + "\n")
    rows = [stored["rows"][n] for n in SETS if n in stored["rows"]]
    write_results(Path(args.results), rows, {int(k): v for k, v in stored["latency"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
