"""RGB + 3D: the five sensor situations of issue 6, on the generated set or on real scans (issue 21).

(a) both modalities, (b) RGB only, (c) 3D only, (d) RGB only with distilled 3D stand-ins, (e) 3D only with
distilled RGB stand-ins. Per product: image AUROC, pixel AUROC, AU-PRO (FPR <= 0.3; "-" without masks), image
AUROC over the defects the mode's sensor can see (labels by sensor: a colour defect is not a defect to a 3D
sensor, a dent that leaves the colour alone not one to a camera), image AUROC per defect type, the fusion weights
the model chose from held-out good parts, and the share of the (b) -> (a) gap that distillation recovers.

    .venv/bin/python benchmarks/multimodal_3d.py [--categories dome,tile]           # generated set
    .venv/bin/python benchmarks/multimodal_3d.py --data /work/shared/data/mulsen_ad_subset   # real scans
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402
from engine.datasets.demo3d import CATEGORIES, DEFAULTS, generate_demo3d  # noqa: E402
from engine.metrics import image_auroc  # noqa: E402
from engine.multimodal_eval import evaluate_multimodal  # noqa: E402

LETTERS = {"both": "(a) both", "rgb_only": "(b) RGB only", "geo_only": "(c) 3D only",
           "rgb_with_distilled_geo": "(d) RGB + distilled 3D", "geo_with_distilled_rgb": "(e) 3D + distilled RGB"}
# Defect types only one sensor can see (labels by sensor): the generated set's dents and bumps change no colour,
# its stains and MulSen-AD's colour defects no shape. Every other type counts for both sensors.
ONLY_SEEN_BY = {"dent": "geo", "bump": "geo", "stain": "rgb", "color": "rgb"}
SENSOR = {"both": None, "rgb_only": "rgb", "geo_only": "geo", "rgb_with_distilled_geo": "rgb",
          "geo_with_distilled_rgb": "geo"}  # the sensor a mode really has
SHAPE_TYPES = ("hole", "broken", "crack", "squeeze", "foreign_body")  # issue 21's defects that change the shape
SOURCE_NAMES = {"rgb": "RGB", "geo": "3D", "rgb_pred": "distilled RGB", "geo_pred": "distilled 3D"}


def seen_auroc(res: dict, mode: str) -> float:
    """Image AUROC of a mode over good parts and the defect types its sensor can see."""
    sensor = SENSOR[mode]
    keep = [t == "good" or sensor is None or ONLY_SEEN_BY.get(t, sensor) == sensor for t in res["types"]]
    scores = [v for v, k in zip(res["modes"][mode]["scores"], keep, strict=True) if k]
    labels = [int(t != "good") for t, k in zip(res["types"], keep, strict=True) if k]
    return image_auroc(scores, labels)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def gap(result: dict, metric: str) -> float | None:
    a, b, d = (result["modes"][m][metric] for m in ("both", "rgb_only", "rgb_with_distilled_geo"))
    return None if a is None or b is None or d is None or abs(a - b) < 1e-6 else (d - b) / (a - b)


def render(results: dict, machine: str, seconds: dict, real: Path | None = None, notes: dict | None = None) -> str:
    if real is None:
        title = "## RGB + 3D: both sensors, one missing, distilled stand-ins (generated set)"
        data = (f"Data: `engine.datasets.demo3d` (MVTec 3D-AD layout, {DEFAULTS['size']} px, per product "
                f"{DEFAULTS['n_train']} train / {DEFAULTS['n_validation']} validation good, {DEFAULTS['n_test_good']} "
                f"good and {DEFAULTS['n_test_defect']} per defect type in test; dent and bump are 3D-only (shading "
                "changes by 2-4 grey levels), stain colour-only, hole and crack both; xyz clouds, so 3D features are "
                "FPFH).")
        cmd = "`benchmarks/multimodal_3d.py`"
    else:
        title = "## RGB + 3D on real scans: MulSen-AD subset (depth maps)"
        data = (f"Data: `{real}` (two MulSen-AD products, laser scans rendered to 256 x 256 8-bit depth maps, no "
                "zero background, unknown scale; masks drawn on RGB for some parts only and not aligned with depth, so "
                "image level only: no pixel AUROC / AU-PRO; "
                "no validation split: the last 20% of train/good are the held-out good parts). 3D features: the RGB "
                "graph on each depth map's geometry image (relief, curvature, slope, each divided by the image's own "
                "robust spread: offset- and scale-invariant). Labels by sensor: `color` is RGB-only.")
        cmd = f"`benchmarks/multimodal_3d.py --data {real}`"
    lines = [title, "", f"Machine: {machine}; CPU only. Run {time.strftime('%Y-%m-%d')} with {cmd}.", "", data,
             "Model: EfficientNet-Lite0 patch features (256 px, 32 x 32 patches), 10% greedy coresets, LayerNorm + MLP "
             "(1024 hidden) translators early-stopped on the held-out good parts; stand-ins query the measured bank of "
             "the missing modality, their maps first normalised per pixel by good parts' maps (rows marked 'vs a bank "
             "of stand-ins' query a bank of the stand-ins predicted for the training parts instead); maps normalised by "
             "held-out good parts' scores, then a weighted mean with the weights the model chose from held-out good "
             "parts (listed under each table; no defect is looked at). 'seen' = image AUROC over the good parts and "
             "the defect types the mode's sensor can see.", ""]
    for cat, res in results.items():
        types = list(next(iter(res["modes"].values()))["image_auroc_per_type"])
        head = "| mode | image AUROC | seen | pixel AUROC | AU-PRO | " + " | ".join(types) + " |"
        lines += [f"**{cat}** ({res['n_test']} test parts, {res['n_defective']} defective; training "
                  f"{seconds[cat]:.0f} s): image AUROC per defect type on the right", "", head,
                  "|" + "---|" * (5 + len(types))]
        def pixel(m: dict) -> str:  # real scans: masks drawn on RGB for some parts only, not aligned with depth
            return "- | -" if real is not None else f"{_fmt(m['pixel_auroc'])} | {_fmt(m['aupro'])}"

        for mode, m in res["modes"].items():
            lines.append(f"| {LETTERS[mode]} | {m['image_auroc']:.3f} | {seen_auroc(res, mode):.3f} | {pixel(m)} | "
                         + " | ".join(f"{m['image_auroc_per_type'][t]:.3f}" for t in types) + " |")
        for mode, m in res.get("predicted_banks", {}).items():
            lines.append(f"| {LETTERS[mode]}, stand-ins vs a bank of stand-ins | {m['image_auroc']:.3f} | - | "
                         f"{pixel(m)} | " + " | ".join(f"{m['image_auroc_per_type'][t]:.3f}" for t in types) + " |")
        fusion = res.get("fusion") or {}
        if fusion:
            w, ev = fusion["weights"], fusion["evidence"]
            lines += ["", f"3D input: {res.get('depth_kind') or 'xyz point clouds (FPFH)'}. Fusion weights "
                      f"({fusion['rule']}, {fusion['n_parts']} parts): "
                      + ", ".join(f"{SOURCE_NAMES[k]} {w[k]:.3f}" for k in ("rgb", "geo", "geo_pred", "rgb_pred"))
                      + f" (headroom RGB {ev['rgb']['headroom']:.1f}, 3D {ev['geo']['headroom']:.1f}; translators "
                      f"explain {ev['geo_pred']['explained']:.2f} of the 3D and {ev['rgb_pred']['explained']:.2f} of "
                      "the RGB feature variance)."]
        g = {k: gap(res, k) for k in (("image_auroc",) if real is not None else ("image_auroc", "pixel_auroc", "aupro"))}
        a, b, d = (res["modes"][k]["image_auroc"] for k in ("both", "rgb_only", "rgb_with_distilled_geo"))
        shape = [t for t in types if t in SHAPE_TYPES]
        lines += ["", f"Against RGB only: (a) - (b) = {a - b:+.3f}, (d) - (b) = {d - b:+.3f}. "
                  + ("3D only on the shape-changing types: " + ", ".join(
                      f"{t} {res['modes']['geo_only']['image_auroc_per_type'][t]:.3f}" for t in shape) + ". "
                     if shape else "")
                  + "Gap (b) -> (a) recovered by distillation, ((d) - (b)) / ((a) - (b)): " + ", ".join(
                      f"{k.replace('_', ' ')} {'n/a' if v is None else f'{100 * v:.0f}%'}" for k, v in g.items()) + "."]
        if notes and cat in notes:
            lines += ["", notes[cat]]
        lines.append("")
    return "\n".join(lines)


def clipped_note(data: Path, cat: str) -> str:
    """Share of pixels at the depth type's ceiling per test type: out-of-range readings the scorer sees too."""
    from engine.datasets import load_dataset
    from engine.datasets.depth_kind import detect_depth_kind
    from engine.datasets.pointcloud import cloud_path, read_depth_array

    ds = load_dataset(data, category=cat)
    by_type: dict[str, list[float]] = {}
    for s in ds.samples:
        p = cloud_path(s.extra)
        if p is not None and (s.split == "test" or s.label == "good"):
            key = "train good" if s.split == "train" else (s.defect_type or "good")
            by_type.setdefault(key, []).append(detect_depth_kind(read_depth_array(p)).clipped)
    parts = [f"{k} {100 * sum(v) / len(v):.1f}%" for k, v in sorted(by_type.items())]
    return ("Depth pixels at the ceiling (255, clipped), mean share per file: " + ", ".join(parts) + ". Where the "
            "defective parts' maps are clipped and the good ones' are not, the 3D figures measure the clipping too.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "multimodal_3d"))
    ap.add_argument("--categories", default=None, help="products (default: all of the data set)")
    ap.add_argument("--data", default=None, help="an RGB + 3D data set in the MVTec 3D-AD layout (default: the "
                                                 "generated set); results go to their own RESULTS.md section")
    ap.add_argument("--no-predicted-banks", action="store_true", help="skip the 'vs a bank of stand-ins' rows")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads()))
    real = Path(args.data).resolve() if args.data else None
    out = Path(args.out) / ("real" if real else "")
    if real is None:
        data = generate_demo3d(out / "data")
        categories = args.categories.split(",") if args.categories else list(CATEGORIES)
    else:
        data = real
        categories = args.categories.split(",") if args.categories else sorted(
            d.name for d in real.iterdir() if d.is_dir() and (d / "train").is_dir())
    from trainers.multimodal.fit import MultimodalConfig, train_multimodal

    results, seconds, notes = {}, {}, {}
    for cat in categories:
        t0 = time.perf_counter()
        train_multimodal(data, cat, out / "models" / cat, MultimodalConfig(),
                         lambda f, m, c=cat: print(f"{c} {100 * f:5.1f}% {m}", file=sys.stderr, end="\r"))
        seconds[cat] = time.perf_counter() - t0
        results[cat] = evaluate_multimodal(out / "models" / cat, data, cat, cache_dir=out / "models" / cat / "cache")
        results[cat]["training_seconds"] = round(seconds[cat], 1)
        meta = json.loads((out / "models" / cat / "multimodal.json").read_text())
        results[cat]["fusion"] = meta["fusion"]
        results[cat]["depth_kind"] = (meta.get("depth") or {}).get("kind", {}).get("description")
        if real is not None:
            notes[cat] = clipped_note(data, cat)
        if args.no_predicted_banks:
            print(file=sys.stderr)
            continue
        alt = evaluate_multimodal(out / "models" / cat, data, cat, cache_dir=out / "models" / cat / "cache",
                                  modes=("rgb_with_distilled_geo", "geo_with_distilled_rgb"),
                                  stand_in_bank="predicted")
        results[cat]["predicted_banks"] = alt["modes"]
        print(file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = render(results, machine_info(), seconds, real, notes)
    print(text)
    if not args.no_results:
        replace_section(REPO / "benchmarks" / "RESULTS.md", "multimodal-3d-real" if real else "multimodal-3d", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
