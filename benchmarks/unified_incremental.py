"""One model for many products, learned product by product (issue 7): IUF vs naive fine-tuning vs joint training vs
one memory-bank model per product (`--methods` picks which; `--add-to-previous` keeps earlier runs).

Protocol "2 - 1 with 2 steps" over four products: grid and hazelnut (real, ../shared/data) in the base step, then
magnetic tile (real), then washer (generated demo). After every step: image and pixel AUROC on every product seen
so far, their mean, and the average forgetting (drop from each old product's best earlier value).

    .venv/bin/python benchmarks/unified_incremental.py [--epochs 30] [--image-size 256]
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

SHARED = REPO.parent / "shared" / "data"
REAL = {"grid": SHARED / "mvtec_ad_grid_mini" / "grid", "hazelnut": SHARED / "hazelnut_toy" / "hazelnut",
        "magnetic_tile": SHARED / "magnetic_tile" / "MT"}
STEPS = [["grid", "hazelnut"], ["magnetic_tile"], ["washer"]]
MAX_TEST = 100  # test images per product at most (evenly spaced over the folder order: all defect types stay)


def products_root(out: Path) -> Path:
    """One dataset root with a category folder per product: symlinks to the real sets (never copies) and the
    generated washer category."""
    from engine.datasets.demo import generate_demo_dataset

    root = out / "products"
    root.mkdir(parents=True, exist_ok=True)
    for name, src in REAL.items():
        link = root / name
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
    if not (root / "washer").exists():
        demo = generate_demo_dataset(out / "demo", categories=["washer"], n_train=60, n_test_good=20,
                                     n_test_defect_per_type=8, seed=7)
        (root / "washer").symlink_to(demo / "washer", target_is_directory=True)
    return root


def forgetting(history: list[dict[str, dict]], metric: str) -> float | None:
    """Mean over products learned before the last step of (best earlier value - last value)."""
    drops = list(product_drops(history, metric).values())
    return sum(drops) / len(drops) if drops else None


def product_drops(history: list[dict[str, dict]], metric: str) -> dict[str, float]:
    """Per product learned before the last step: best earlier value - last value."""
    last = history[-1]
    out = {}
    for p in last:
        earlier = [h[p][metric] for h in history[:-1] if p in h and h[p][metric] is not None]
        if earlier and last[p][metric] is not None:
            out[p] = max(earlier) - last[p][metric]
    return out


def run_sequence(root: Path, name: str, step_cfg_kw: dict, cfg_kw: dict, steps: list[list[str]]) -> list[dict]:
    from trainers.unified.fit import StepConfig, evaluate_products, train_step
    from trainers.unified.model import UnifiedConfig

    state, history = None, []
    for i, new in enumerate(steps):
        t = time.perf_counter()
        state = train_step(state, root, new, UnifiedConfig(**cfg_kw), StepConfig(**step_cfg_kw))
        res = evaluate_products(state, root, max_test=MAX_TEST)
        history.append(res)
        print(f"{name} step {i + 1} ({time.perf_counter() - t:.0f} s): {json.dumps(res)}", file=sys.stderr)
    return history


def memory_bank_per_product(root: Path, out: Path, image_size: int) -> dict[str, dict]:
    """One memory-bank model per product, scored on the same test subset as the unified models."""
    from engine.datasets import DEFECTIVE
    from engine.datasets.imageio import read_image, read_mask
    from engine.jobs import run_job
    from engine.metrics import evaluate_anomaly
    from engine.runtime import AnomalyModel
    from trainers.unified.fit import labelled_test_samples

    res = {}
    for p in [p for s in STEPS for p in s]:
        run_job("train_anomaly", {"data": str(root), "category": p, "out": str(out / "bank" / p),
                                  "image_size": image_size, "device": "cpu"})
        model = AnomalyModel(out / "bank" / p, device="cpu")
        test = labelled_test_samples(root, p, MAX_TEST)
        preds = [model.predict(read_image(s.image_path)) for s in test]
        masks = [None if s.mask_path is None else read_mask(s.mask_path) for s in test]
        m = evaluate_anomaly([q.score for q in preds], [int(s.label == DEFECTIVE) for s in test],
                             [q.anomaly_map for q in preds], masks)
        res[p] = {"image_auroc": round(m["image_auroc"], 4),
                  "pixel_auroc": None if m["pixel_auroc"] is None else round(m["pixel_auroc"], 4)}
    return res


def _mean(d: dict[str, dict], metric: str) -> float:
    vals = [v[metric] for v in d.values() if v[metric] is not None]
    return sum(vals) / len(vals)


def render(results: dict, args: argparse.Namespace) -> str:
    products = [p for s in STEPS for p in s]
    lines = ["## Unified model, product by product (IUF): 2 - 1 with 2 steps", "",
             f"Machine: {machine_info()}. Run {time.strftime('%Y-%m-%d')} with `benchmarks/unified_incremental.py` "
             f"({args.epochs} epochs per step, {args.image_size} px, at most {args.max_images} training images and "
             f"{MAX_TEST} test images per product).", "",
             "Steps: " + " -> ".join("+" + ", ".join(s) for s in STEPS) + ". Image AUROC / pixel AUROC per product "
             "after each step; forgetting = mean drop of the old products from their best earlier value.", ""]
    head = "| method | step | " + " | ".join(products) + " | mean | forgetting (image / pixel) |"
    lines += [head, "|" + "---|" * (len(products) + 4)]
    for method in ("iuf", "iuf_no_compression", "naive"):
        if method not in results:
            continue
        hist = results[method]
        for i, res in enumerate(hist):
            cells = [f"{res[p]['image_auroc']:.3f} / {res[p]['pixel_auroc']:.3f}" if p in res else "" for p in products]
            fi, fp = forgetting(hist[: i + 1], "image_auroc"), forgetting(hist[: i + 1], "pixel_auroc")
            lines.append(f"| {method} | {i + 1} | " + " | ".join(cells) + f" | {_mean(res, 'image_auroc'):.3f} / "
                         f"{_mean(res, 'pixel_auroc'):.3f} | " + ("-" if fi is None else f"{fi:.3f} / {fp:.3f}")
                         + " |")
    if "joint" in results:  # a partial run (--methods iuf) has no joint row
        joint = results["joint"][-1]
        lines.append("| joint (all at once, upper bound) | 1 | " + " | ".join(
            f"{joint[p]['image_auroc']:.3f} / {joint[p]['pixel_auroc']:.3f}" for p in products)
            + f" | {_mean(joint, 'image_auroc'):.3f} / {_mean(joint, 'pixel_auroc'):.3f} | - |")
    bank = results.get("bank")
    if bank:
        lines.append("| memory bank per product | - | " + " | ".join(
            f"{bank[p]['image_auroc']:.3f} / {bank[p]['pixel_auroc'] or 0:.3f}" for p in products)
            + f" | {_mean(bank, 'image_auroc'):.3f} | - |")
    summary = ", ".join(f"{m} {forgetting(results[m], 'image_auroc'):.3f} / {forgetting(results[m], 'pixel_auroc'):.3f}"
                        for m in ("iuf", "iuf_no_compression", "naive") if m in results)
    lines += ["", f"Average forgetting (image / pixel AUROC) after the last step: {summary}.", ""]
    per_product = []
    for m in ("iuf", "iuf_no_compression", "naive"):
        if m in results:
            drops = product_drops(results[m], "image_auroc")
            per_product.append(f"{m} " + ", ".join(f"{p} {d:+.3f}" for p, d in drops.items()))
    if per_product:
        lines += ["Image AUROC drop per old product after the last step (best earlier value - last; positive = "
                  "forgotten): " + "; ".join(per_product) + ".", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "unified"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--max-images", type=int, default=60)
    ap.add_argument("--compression-weight", type=float, default=1.0,
                    help="weight of IUF's semantic compression loss (a share of the nuclear norm, 0..1)")
    ap.add_argument("--methods", default="iuf,iuf_no_compression,naive,joint,bank",
                    help="comma-separated: iuf, iuf_no_compression (anchoring and projection only), naive, joint, bank")
    ap.add_argument("--add-to-previous", action="store_true",
                    help="keep the methods of the previous results.json in --out and (re)run only --methods")
    ap.add_argument("--no-results", action="store_true")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    out = Path(args.out)
    root = products_root(out)
    cfg = {"image_size": args.image_size}
    base = {"epochs": args.epochs, "max_images": args.max_images, "lr": 1e-4}
    runs = {
        "iuf": lambda: run_sequence(root, "iuf", {**base, "anchor_weight": 1.0,
                                                      "compression_weight": args.compression_weight}, cfg,
                                    STEPS),
        "iuf_no_compression": lambda: run_sequence(root, "iuf_no_compression", {**base, "anchor_weight": 1.0}, cfg,
                                                   STEPS),
        "naive": lambda: run_sequence(root, "naive", {**base, "project": False}, cfg, STEPS),
        "joint": lambda: run_sequence(root, "joint", base, cfg, [[p for s in STEPS for p in s]]),
        "bank": lambda: memory_bank_per_product(root, out, args.image_size),
    }
    previous = out / "results.json"
    results = json.loads(previous.read_text()) if args.add_to_previous and previous.is_file() else {}
    for method in filter(None, args.methods.split(",")):  # --methods "" --add-to-previous: only re-render
        if method not in runs:
            print(f"unknown method '{method}'; known: {', '.join(runs)}", file=sys.stderr)
            return 2
        results[method] = runs[method]()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = render(results, args)
    print(text)
    if not args.no_results:
        replace_section(REPO / "benchmarks" / "RESULTS.md", "unified", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
