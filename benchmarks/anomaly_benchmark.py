"""Train and evaluate the memory-bank model on the real sets in ../shared/data; write benchmarks/RESULTS.md.

Runs the CLI contract exactly as a user would (`defectscope train anomaly`, `defectscope eval`) in subprocesses,
measuring wall time and peak resident memory of each training run (the process tree, polled every 0.1 s).

    .venv/bin/python benchmarks/anomaly_benchmark.py [--sets magnetic_tile,hazelnut,grid] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.results_md import replace_section  # noqa: E402

SHARED = REPO.parent / "shared" / "data"

SETS = {
    "magnetic_tile": {"root": "magnetic_tile", "category": "MT",
                      "targets": {"image_auroc": 0.95, "aupro": 0.85}},
    "hazelnut": {"root": "hazelnut_toy", "category": "hazelnut", "targets": {"image_auroc": 0.98}},
    "grid": {"root": "mvtec_ad_grid_mini", "category": "grid", "targets": {"pixel_auroc": 0.95}},
}
TARGET_LATENCY_MS = 40.0
TARGET_TRAIN_S_MT = 180.0
TARGET_PEAK_GB = 3.0


def run_measured(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in GB of the process tree, completed process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return wall, peak / 1e9, subprocess.CompletedProcess(cmd, proc.returncode, out, err)



def run_step(cmd: list[str], what: str) -> tuple[float, float]:
    """One CLI step of a benchmark protocol, logged with the time: (wall seconds, peak GB); stops the benchmark
    with the step's stderr when it fails."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}: {' '.join(cmd[3:])}", flush=True)
    wall, peak, proc = run_measured(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, peak

def machine_info() -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    out = Path(args.out)
    cli = [sys.executable, "-m", "app.cli"]
    rows = []
    for name in args.sets.split(","):
        spec = SETS[name]
        data = str(SHARED / spec["root"])
        run_dir = out / name
        wall, peak, proc = run_measured([*cli, "train", "anomaly", "--data", data, "--category", spec["category"],
                                               "--out", str(run_dir), "--image-size", str(args.image_size)])
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        report = run_dir / "eval_report.json"
        _, _, ev = run_measured([*cli, "eval", "--model", str(run_dir), "--data", data, "--category",
                                       spec["category"], "--report", str(report)])
        if ev.returncode != 0:
            print(ev.stderr, file=sys.stderr)
            return 1
        r = json.loads(report.read_text())
        meta = json.loads((run_dir / "model.json").read_text())
        row = {"set": name, "category": spec["category"], "train_s": round(wall, 1), "peak_gb": round(peak, 2),
               "n_train": meta["training"]["n_train_images"], "bank": meta["training"]["bank_size"],
               **{k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "n_test", "latency_ms",
                                    "provider")},
               "targets": spec["targets"], "per_defect_type": r["per_defect_type"],
               "config": meta["training"]["config"]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("per_defect_type", "config")}), flush=True)
    (out / "anomaly_results.json").write_text(json.dumps(rows, indent=2))
    write_results(Path(args.results), rows, args.image_size)
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_results(path: Path, rows: list[dict], image_size: int) -> None:
    cfg = rows[0]["config"]
    lines = [
        f"### Memory-bank anomaly model on ../shared/data ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {machine_info()}.",
        f"Command: `python benchmarks/anomaly_benchmark.py` (CLI defaults: image size {image_size}, {cfg['backbone']} "
        f"stages {cfg['stages']}, bank cap {cfg['bank_size']} / coreset ratio {cfg['coreset_ratio']}, resize "
        f"`{cfg['resize']}`, blur sigma {cfg['blur_sigma']}, hold-out {cfg['holdout_fraction']:.0%} up to "
        f"{cfg['max_holdout']}). Latency is the median per image through ONNX Runtime, pre/post-processing "
        "included, image decoding excluded.",
        "",
        "| set | train images | bank | image AUROC | pixel AUROC | AU-PRO | F1-max | test images | latency ms "
        "| train s | peak GB | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        targets = ", ".join(
            f"{k} >= {v} {'met' if (r[k] or 0) >= v else 'NOT met'}" for k, v in r["targets"].items()
        )
        lines.append(
            f"| {r['set']} | {r['n_train']} | {r['bank']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} "
            f"| {_fmt(r['aupro'])} | {_fmt(r['f1_max'])} | {r['n_test']} | {r['latency_ms']:.1f} | {r['train_s']:.0f} "
            f"| {r['peak_gb']:.2f} | {targets} |"
        )
    worst_latency = max(r["latency_ms"] for r in rows)
    peak = max(r["peak_gb"] for r in rows)
    mt = next((r for r in rows if r["set"] == "magnetic_tile"), None)
    lines += [
        "",
        f"- ONNX latency: worst median {worst_latency:.1f} ms (target <= {TARGET_LATENCY_MS:.0f} ms): "
        f"{'met' if worst_latency <= TARGET_LATENCY_MS else 'NOT met'}.",
        f"- Peak memory of a training run: {peak:.2f} GB (target <= {TARGET_PEAK_GB} GB): "
        f"{'met' if peak <= TARGET_PEAK_GB else 'NOT met'}.",
    ]
    if mt:
        lines.append(f"- Training on the {mt['n_train']} + hold-out magnetic-tile good images: {mt['train_s']:.0f} s "
                     f"wall, process start and ONNX export included (target <= {TARGET_TRAIN_S_MT:.0f} s): "
                     f"{'met' if mt['train_s'] <= TARGET_TRAIN_S_MT else 'NOT met'}.")
    lines.append("")
    for r in rows:
        per = ", ".join(f"{k} {v['recall']:.2f} ({v['n']})" for k, v in sorted(r["per_defect_type"].items()))
        lines.append(f"- {r['set']} recall per defect type at the model's own threshold: {per}")
    section = "\n".join(lines) + "\n"
    replace_section(path, "anomaly-benchmark", section)


if __name__ == "__main__":
    sys.exit(main())
