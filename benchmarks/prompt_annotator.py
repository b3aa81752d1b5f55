"""Simulated annotator on the real defect masks of ../shared/data: DefectScope's trained segmenter vs GrabCut.

Protocol (per defect = one connected part of a ground-truth mask, parts closer than 2% of the image's long side
joined, specks under 4 model-frame pixels dropped: the definition the trainer uses, trainers.promptseg.prompts):
  1. one box prompt: the defect's tight ground-truth box (interaction 1);
  2. up to 5 corrective clicks, each at the centre of the largest error region of the current mask (positive on
     a missed defect, negative on a false positive), the previous low-res logits fed back as mask_input;
  3. IoU against the defect's mask at the original image size after every interaction; NoC@80 = interactions
     (box = 1) until IoU >= 0.8, 6 when never reached; the share never reaching it is reported too.

(a) The segmenter is trained here (trainers.promptseg, CPU, a time budget) on one half of every (dataset,
    category, defect type) group's defective images (magnetic tile, hazelnut, grid together) and scored on the
    other half, the held-out list recorded in its segmenter.json; inference runs the exported ONNX graphs through
    engine.runtime.segmenter.PromptSegmenter (ONNX Runtime, 2 threads).
(b) GrabCut (OpenCV, 5 iterations) initialised from the same box, on a window around it (margin: the box's
    larger side, at least 10% of the long side); each corrective click becomes a sure-foreground or
    sure-background disk stroke (radius 0.5% of the long side, at least 2 px) and GrabCut re-runs from its mask.

    .venv/bin/python benchmarks/prompt_annotator.py [--time-budget 900] [--reuse]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the benchmarks package importable

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402
from engine.datasets.imageio import read_image  # noqa: E402
from trainers.promptseg.data import DataSource, collect_masked_images, image_defects  # noqa: E402
from trainers.promptseg.prompts import Defect, correction_click, iou  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SETS = {"magnetic_tile": "magnetic_tile", "hazelnut": "hazelnut_toy", "grid": "mvtec_ad_grid_mini"}
MAX_CLICKS = 5  # corrective clicks after the box
IOU_TARGET = 0.8
TARGET_DECODER_MS = 50.0


# ------------------------------------------------------------------------------------------------- annotators
class SegmenterAnnotator:
    """The exported segmenter through the engine's runtime (encoder once per image, decoder per click)."""

    name = "DefectScope segmenter (ONNX)"

    def __init__(self, run_dir: Path, threads: int) -> None:
        from engine.runtime.segmenter import PromptSegmenter

        self.seg = PromptSegmenter(run_dir, device="cpu", cache_size=2, threads=threads)
        self.encoder_ms: list[float] = []
        self.decoder_ms: list[float] = []
        self._emb: Any = None

    def set_image(self, image: np.ndarray, key: str) -> None:
        t = time.perf_counter()
        self._emb = self.seg.embed(image, key=key)
        self.encoder_ms.append(1000 * (time.perf_counter() - t))

    def run(self, box: tuple[float, float, float, float], gt: np.ndarray, clicks: int) -> list[float]:
        t = time.perf_counter()
        pred = self.seg.predict(self._emb, box=box)
        self.decoder_ms.append(1000 * (time.perf_counter() - t))
        ious = [iou(pred.mask, gt)]
        points: list[tuple[float, float]] = []
        labels: list[int] = []
        for _ in range(clicks):
            click = correction_click(pred.mask, gt)
            if click is None:  # perfect already: the annotator stops, the IoU stays
                ious.append(ious[-1])
                continue
            points.append(click[:2])
            labels.append(click[2])
            t = time.perf_counter()
            pred = self.seg.predict(self._emb, points, labels, box=box, mask_input=pred.low_res_logits)
            self.decoder_ms.append(1000 * (time.perf_counter() - t))
            ious.append(iou(pred.mask, gt))
        return ious

    def close(self) -> None:
        self.seg.close()


class GrabCutAnnotator:
    """cv2.grabCut from the box; corrective clicks as sure-fg / sure-bg disks, re-run from the mask."""

    name = "GrabCut (OpenCV)"

    def __init__(self, iterations: int = 5) -> None:
        self.iterations = iterations
        self.call_ms: list[float] = []
        self._bgr: np.ndarray | None = None

    def set_image(self, image: np.ndarray, key: str) -> None:
        self._bgr = np.ascontiguousarray(image[:, :, ::-1])

    def _grabcut(self, bgr: np.ndarray, mask: np.ndarray, rect: tuple[int, int, int, int] | None,
                 models: list[np.ndarray], mode: int) -> np.ndarray:
        t = time.perf_counter()
        # A box too thin for GrabCut's colour models raises; the mask then keeps its initial labels.
        with contextlib.suppress(cv2.error):
            cv2.grabCut(bgr, mask, rect, models[0], models[1], self.iterations, mode)
        self.call_ms.append(1000 * (time.perf_counter() - t))
        return mask

    def run(self, box: tuple[float, float, float, float], gt: np.ndarray, clicks: int) -> list[float]:
        assert self._bgr is not None
        h, w = gt.shape
        x0, y0, x1, y1 = (round(v) for v in box)
        # GrabCut runs on a window around the box (everything outside the box is background either way):
        # the background colour model then describes the defect's surroundings, and a 1024 px image does not
        # cost seconds per click. Margin: the box's larger side, at least 10% of the image's long side.
        margin = max(x1 - x0 + 1, y1 - y0 + 1, round(0.1 * max(h, w)))
        cx0, cy0 = max(0, x0 - margin), max(0, y0 - margin)
        cx1, cy1 = min(w, x1 + 1 + margin), min(h, y1 + 1 + margin)
        bgr = np.ascontiguousarray(self._bgr[cy0:cy1, cx0:cx1])
        rect = (x0 - cx0, y0 - cy0, x1 - x0 + 1, y1 - y0 + 1)
        mask = np.full(bgr.shape[:2], cv2.GC_BGD, np.uint8)
        mask[rect[1] : rect[1] + rect[3], rect[0] : rect[0] + rect[2]] = cv2.GC_PR_FGD
        models = [np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)]
        full = np.zeros_like(gt)

        def as_full(m: np.ndarray) -> np.ndarray:
            full[cy0:cy1, cx0:cx1] = (m == cv2.GC_FGD) | (m == cv2.GC_PR_FGD)
            return full

        mask = self._grabcut(bgr, mask, rect, models, cv2.GC_INIT_WITH_RECT)
        ious = [iou(as_full(mask), gt)]
        radius = max(2, round(0.005 * max(h, w)))
        for _ in range(clicks):
            # clicks come from the full-image error (the defect never leaves the window: it is inside the box)
            click = correction_click(as_full(mask), gt)
            if click is None:
                ious.append(ious[-1])
                continue
            x, y, label = click
            cv2.circle(mask, (int(x) - cx0, int(y) - cy0), radius, cv2.GC_FGD if label == 1 else cv2.GC_BGD, -1)
            mask = self._grabcut(bgr, mask, None, models, cv2.GC_INIT_WITH_MASK)
            ious.append(iou(as_full(mask), gt))
        return ious


# ----------------------------------------------------------------------------------------------------- scoring
def noc(ious: list[float], target: float, cap: int) -> int:
    """Interactions (box = 1) until IoU >= target; `cap` when never reached."""
    for i, v in enumerate(ious):
        if v >= target:
            return i + 1
    return cap


def summarise(curves: list[list[float]]) -> dict[str, Any]:
    arr = np.asarray(curves, dtype=np.float64)
    cap = arr.shape[1]
    nocs = [noc(list(c), IOU_TARGET, cap) for c in arr]
    return {
        "n_defects": len(curves),
        "miou": [round(float(v), 4) for v in arr.mean(0)],
        "noc80": round(float(np.mean(nocs)), 3),
        "never_80": round(float(np.mean([max(c) < IOU_TARGET for c in arr])), 4),
    }


def score(run_dir: Path, threads: int, limit: int | None) -> dict[str, Any]:
    meta = json.loads((run_dir / "segmenter.json").read_text())
    cfg = meta["training"]["config"]
    held_out = set(meta["training"]["images_holdout"])
    train = set(meta["training"]["images_train"])
    if held_out & train:
        raise RuntimeError("held-out images overlap the training images")
    annotators = [SegmenterAnnotator(run_dir, threads), GrabCutAnnotator()]
    per_set: dict[str, dict[str, list[list[float]]]] = {}
    n_images: dict[str, int] = {}
    for set_name, folder in SETS.items():
        items = [m for m in collect_masked_images([DataSource(SHARED / folder)]) if str(m.image_path) in held_out]
        items = items[:limit] if limit else items
        n_images[set_name] = len(items)
        curves: dict[str, list[list[float]]] = {a.name: [] for a in annotators}
        for k, item in enumerate(items):
            image = read_image(item.image_path)
            mask = item.read_mask(image.shape[:2])
            defects: list[Defect] = image_defects(mask, cfg["merge_gap_fraction"], cfg["min_defect_area"],
                                                  cfg["input_size"])
            for ann in annotators:
                ann.set_image(image, str(item.image_path))
                for d in defects:
                    curves[ann.name].append(ann.run(d.box, d.mask, MAX_CLICKS))
            print(f"{set_name}: {k + 1}/{len(items)} images", end="\r", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        per_set[set_name] = curves
    seg, gc = annotators[0], annotators[1]
    seg.close()
    result: dict[str, Any] = {"methods": {}, "n_images": n_images}
    for ann in annotators:
        by_set = {s: summarise(c[ann.name]) for s, c in per_set.items() if c[ann.name]}
        pooled = summarise([curve for c in per_set.values() for curve in c[ann.name]])
        macro = {
            "miou": [round(float(np.mean([v["miou"][i] for v in by_set.values()])), 4)
                     for i in range(MAX_CLICKS + 1)],
            "noc80": round(float(np.mean([v["noc80"] for v in by_set.values()])), 3),
        }
        result["methods"][ann.name] = {"per_set": by_set, "pooled": pooled, "macro": macro}
    result["latency_ms"] = {
        "segmenter_encoder_median": round(float(np.median(seg.encoder_ms)), 1),
        "segmenter_encoder_p90": round(float(np.percentile(seg.encoder_ms, 90)), 1),
        "segmenter_decoder_median": round(float(np.median(seg.decoder_ms)), 2),
        "segmenter_decoder_p90": round(float(np.percentile(seg.decoder_ms, 90)), 2),
        "grabcut_call_median": round(float(np.median(gc.call_ms)), 1),
        "grabcut_call_p90": round(float(np.percentile(gc.call_ms, 90)), 1),
        "n_decoder_calls": len(seg.decoder_ms),
    }
    return result


# ----------------------------------------------------------------------------------------------------- report
def _row(name: str, s: dict[str, Any]) -> str:
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in s["miou"]) + f" | {s['noc80']:.2f} |"


def render(result: dict[str, Any], meta: dict[str, Any], machine: str, train_wall_s: float | None) -> str:
    t = meta["training"]
    c = t["config"]
    seg_name, gc_name = list(result["methods"])
    head = "| method | box | +1 | +2 | +3 | +4 | +5 | NoC@80 |\n|---|---|---|---|---|---|---|---|\n"
    lines = [
        "## Prompt annotator: trained segmenter vs GrabCut (real masks)",
        "",
        f"Machine: {machine}. Run {time.strftime('%Y-%m-%d')} with `benchmarks/prompt_annotator.py`.",
        "",
        "Simulated annotator per defect (a connected part of a ground-truth mask; parts closer than 2% of the "
        "long side joined; specks under 4 model-frame px dropped): the tight ground-truth box, then up to 5 "
        "corrective clicks at the centre of the largest error region (positive on a miss, negative on a false "
        "positive), previous low-res logits fed back as mask_input. IoU at the original image size. NoC@80 = "
        "interactions until IoU >= 0.8 with the box counted as interaction 1, 6 when never reached.",
        "",
        f"Segmenter: trained by `trainers.promptseg` on CPU ({c['input_size']} px input, EfficientNet-Lite0 trunk "
        f"frozen, embedding {meta['embedding_shape']}, decoder depth {c['decoder_depth']} / mlp "
        f"{c['decoder_mlp_dim']}) on the other half of every (dataset, category, defect type) group's defective "
        f"images: {t['n_train_images']} training images ({t['n_train_defects']} defects, x{c['flips']} flips), "
        f"plus {t.get('n_synthetic_defects', 0)} synthetic defects on {c.get('synthetic_images', 0)} good images "
        f"of the same sets ({100 * c.get('synthetic_share', 0):.0f}% of the draws); "
        f"{t['steps']} steps ({t['epochs_fraction']} epochs, stopped by {t['stopped_by']}), training loop "
        f"{t['seconds_train']:.0f} s, total {t['seconds_total']:.0f} s"
        + (f" (wall incl. start-up {train_wall_s:.0f} s)" if train_wall_s else "")
        + f". Scored on the {t['n_holdout_images']} held-out images, through ONNX Runtime "
        f"(engine.runtime.segmenter). Training-frame box IoU: train {t['train_box_iou']}, held-out "
        f"{t['val_box_iou']}. Export parity: encoder max |diff| {meta['parity']['encoder_max_abs_diff']:.1e}, "
        f"decoder masks {meta['parity']['decoder_masks_max_abs_diff']:.1e}.",
        "",
        "GrabCut: cv2.grabCut, 5 iterations, initialised from the same box on a window around it (margin: the "
        "box's larger side, >= 10% of the long side); clicks become sure-fg / sure-bg disks (radius 0.5% of the "
        "long side, >= 2 px), then GrabCut re-runs from its mask.",
        "",
    ]
    for set_name in [*list(SETS), "pooled", "macro"]:
        if set_name in ("pooled", "macro"):
            seg_s, gc_s = result["methods"][seg_name][set_name], result["methods"][gc_name][set_name]
            title = ("All defects pooled" if set_name == "pooled"
                     else "Macro mean of the three sets (each set weighs the same)")
            n = f" ({seg_s['n_defects']} defects)" if "n_defects" in seg_s else ""
        else:
            if set_name not in result["methods"][seg_name]["per_set"]:
                continue
            seg_s = result["methods"][seg_name]["per_set"][set_name]
            gc_s = result["methods"][gc_name]["per_set"][set_name]
            title = set_name
            n = f" ({result['n_images'][set_name]} held-out images, {seg_s['n_defects']} defects)"
        lines += [f"**{title}**{n}: mIoU after each interaction", "", head + _row(seg_name, seg_s) + "\n"
                  + _row(gc_name, gc_s), ""]
        if "never_80" in seg_s:
            lines += [f"Never reaching IoU 0.8: segmenter {100 * seg_s['never_80']:.1f}%, "
                      f"GrabCut {100 * gc_s['never_80']:.1f}%.", ""]
    lat = result["latency_ms"]
    lines += [
        f"Latency (2 ORT threads, median / p90): segmenter decoder per click {lat['segmenter_decoder_median']:.1f}"
        f" / {lat['segmenter_decoder_p90']:.1f} ms (target <= {TARGET_DECODER_MS:.0f} ms; "
        f"{lat['n_decoder_calls']} calls), encoder per image {lat['segmenter_encoder_median']:.0f} / "
        f"{lat['segmenter_encoder_p90']:.0f} ms; GrabCut per box or click {lat['grabcut_call_median']:.0f} / "
        f"{lat['grabcut_call_p90']:.0f} ms (window around the box, 5 iterations).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "prompt_annotator"))
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--time-budget", type=float, default=5400.0, help="seconds of the training loop (at most)")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the training draws (the usual stop)")
    ap.add_argument("--synthetic-images", type=int, default=600,
                    help="synthetic defects pasted on the sets' good images (engine.synthesis.procedural)")
    ap.add_argument("--synthetic-share", type=float, default=0.3, help="their share of the training draws")
    ap.add_argument("--input-size", type=int, default=512)
    ap.add_argument("--embed-dim", type=int, default=128)
    ap.add_argument("--mlp-dim", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads at scoring")
    ap.add_argument("--limit", type=int, default=None, help="score at most this many images per set (quick runs)")
    ap.add_argument("--reuse", action="store_true", help="score the model already in --out/model")
    ap.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    args = ap.parse_args()
    if not SHARED.is_dir():
        print(f"../shared/data not found at {SHARED}", file=sys.stderr)
        return 2
    out = Path(args.out)
    run_dir = out / "model"
    train_wall = None
    if not (args.reuse and (run_dir / "segmenter.json").is_file()):
        from trainers.promptseg.fit import TrainConfig, train_segmenter

        cfg = TrainConfig(input_size=args.input_size, embed_dim=args.embed_dim, decoder_mlp_dim=args.mlp_dim,
                          epochs=args.epochs, time_budget_s=args.time_budget, holdout_fraction=0.5, device="cpu",
                          synthetic_images=args.synthetic_images, synthetic_share=args.synthetic_share)
        if args.lr:
            cfg.lr = args.lr
        t0 = time.perf_counter()
        last = [0.0]

        def progress(f: float, msg: str) -> None:
            if time.perf_counter() - last[0] > 20 or f >= 0.9:
                last[0] = time.perf_counter()
                print(f"[{time.perf_counter() - t0:7.1f} s] {100 * f:5.1f}% {msg}", file=sys.stderr, flush=True)

        train_segmenter([DataSource(SHARED / folder) for folder in SETS.values()], run_dir, cfg, progress)
        train_wall = time.perf_counter() - t0
        print(json.dumps(asdict(cfg)), file=sys.stderr)
    meta = json.loads((run_dir / "segmenter.json").read_text())
    result = score(run_dir, args.threads, args.limit)
    result["train_wall_s"] = train_wall
    (out / "results.json").write_text(json.dumps(result, indent=2))
    text = render(result, meta, machine_info(), train_wall)
    print(text)
    if not args.no_results and not args.limit:
        replace_section(Path(args.results), "prompt-annotator", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
