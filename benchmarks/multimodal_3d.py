"""RGB + 3D on the generated MVTec 3D-AD-layout set: the five sensor situations of issue 6.

(a) both modalities, (b) RGB only, (c) 3D only, (d) RGB only with distilled 3D stand-ins, (e) 3D only with
distilled RGB stand-ins. Per product: image AUROC, pixel AUROC, AU-PRO (FPR <= 0.3), image AUROC per defect
type, and the share of the (b) -> (a) gap that distillation recovers: ((d) - (b)) / ((a) - (b)).

    .venv/bin/python benchmarks/multimodal_3d.py [--categories dome,tile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402
from engine.datasets.demo3d import CATEGORIES, DEFAULTS, generate_demo3d  # noqa: E402
from engine.multimodal_eval import evaluate_multimodal  # noqa: E402

LETTERS = {"both": "(a) both", "rgb_only": "(b) RGB only", "geo_only": "(c) 3D only",
           "rgb_with_distilled_geo": "(d) RGB + distilled 3D", "geo_with_distilled_rgb": "(e) 3D + distilled RGB"}


def gap(result: dict, metric: str) -> float | None:
    a, b, d = (result["modes"][m][metric] for m in ("both", "rgb_only", "rgb_with_distilled_geo"))
    return None if a is None or b is None or d is None or abs(a - b) < 1e-6 else (d - b) / (a - b)


def render(results: dict, machine: str, seconds: dict) -> str:
    lines = ["## RGB + 3D: both sensors, one missing, distilled stand-ins (generated set)", "",
             f"Machine: {machine}. Run {time.strftime('%Y-%m-%d')} with `benchmarks/multimodal_3d.py`.", "",
             f"Data: `engine.datasets.demo3d` (MVTec 3D-AD layout, {DEFAULTS['size']} px, per product "
             f"{DEFAULTS['n_train']} train / {DEFAULTS['n_validation']} validation good, {DEFAULTS['n_test_good']} "
             f"good and {DEFAULTS['n_test_defect']} per defect type in test; dent and bump are 3D-only (shading "
             "changes by 2-4 grey levels), stain colour-only, hole and crack both). Model: EfficientNet-Lite0 "
             "patch features (256 px, 32 x 32 patches) and FPFH on the preprocessed cloud (128 px grid) pooled to "
             "the same patches, 10% greedy coresets, LayerNorm + MLP (1024 hidden) translators early-stopped on "
             "the validation parts; stand-ins query the measured bank of the missing modality (the default; rows "
             "marked 'vs a bank of stand-ins' query a bank of the stand-ins predicted for the training parts instead); "
             "a stand-in's map against the measured bank is first normalised per pixel by the good training and "
             "validation parts' maps; maps normalised by validation scores and averaged.", ""]
    for cat, res in results.items():
        types = list(next(iter(res["modes"].values()))["image_auroc_per_type"])
        head = "| mode | image AUROC | pixel AUROC | AU-PRO | " + " | ".join(types) + " |"
        lines += [f"**{cat}** ({res['n_test']} test parts, {res['n_defective']} defective; training "
                  f"{seconds[cat]:.0f} s): image AUROC per defect type on the right", "", head,
                  "|" + "---|" * (4 + len(types))]
        for mode, m in res["modes"].items():
            lines.append(f"| {LETTERS[mode]} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} | "
                         + " | ".join(f"{m['image_auroc_per_type'][t]:.3f}" for t in types) + " |")
        for mode, m in res.get("predicted_banks", {}).items():
            lines.append(f"| {LETTERS[mode]}, stand-ins vs a bank of stand-ins | {m['image_auroc']:.3f} | "
                         f"{m['pixel_auroc']:.3f} | {m['aupro']:.3f} | "
                         + " | ".join(f"{m['image_auroc_per_type'][t]:.3f}" for t in types) + " |")
        g = {k: gap(res, k) for k in ("image_auroc", "pixel_auroc", "aupro")}
        lines += ["", "Gap (b) -> (a) recovered by distillation, ((d) - (b)) / ((a) - (b)): " + ", ".join(
            f"{k.replace('_', ' ')} {'n/a' if v is None else f'{100 * v:.0f}%'}" for k, v in g.items()) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "multimodal_3d"))
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    data = generate_demo3d(out / "data")
    from trainers.multimodal.fit import MultimodalConfig, train_multimodal

    results, seconds = {}, {}
    for cat in args.categories.split(","):
        t0 = time.perf_counter()
        train_multimodal(data, cat, out / "models" / cat, MultimodalConfig(),
                         lambda f, m, c=cat: print(f"{c} {100 * f:5.1f}% {m}", file=sys.stderr, end="\r"))
        seconds[cat] = time.perf_counter() - t0
        results[cat] = evaluate_multimodal(out / "models" / cat, data, cat, cache_dir=out / "models" / cat / "cache")
        alt = evaluate_multimodal(out / "models" / cat, data, cat, cache_dir=out / "models" / cat / "cache",
                                  modes=("rgb_with_distilled_geo", "geo_with_distilled_rgb"),
                                  stand_in_bank="predicted")
        results[cat]["predicted_banks"] = alt["modes"]
        print(file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = render(results, machine_info(), seconds)
    print(text)
    if not args.no_results:
        replace_section(REPO / "benchmarks" / "RESULTS.md", "multimodal-3d", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
