"""`defectscope` command line: train, eval, infer, pseudo-boxes, synthesize, datasets, demo.

Over 600 lines on purpose for now: one parser, and each command a thin wrapper (parameters from the job's pydantic
model, run the job, print one summary); splitting the train / engine / jobs groups into modules is due next.

Each subcommand imports what it needs when it runs, so `defectscope infer` never loads torch, and training
goes through the engine's job registry (the app never imports the trainers).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: `defectscope infer` must not pay for httpx
    from engine.client import EngineClient

EXIT_USER_ERROR = 2
DEFAULT_ENGINE_URL = "http://127.0.0.1:8765"


def _progress_printer(label: str) -> Callable[[float, str], None]:
    last = {"pct": -10, "t": 0.0}

    def report(fraction: float, message: str) -> None:
        pct = int(fraction * 100)
        now = time.monotonic()
        if pct >= last["pct"] + 10 or (pct == 100 and last["pct"] != 100) or now - last["t"] > 15:
            last.update(pct=pct, t=now)
            print(f"[{label}] {pct:3d}% {message}", file=sys.stderr, flush=True)

    return report


def cmd_train(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds import TrainAnomalyParams

    params = check_params(TrainAnomalyParams, params_from_args(args, TrainAnomalyParams))
    result = run_job("train_anomaly", params, _progress_printer("train"))
    meta = result["metadata"]
    tr = meta["training"]
    print(
        f"model written to {result['run_dir']}: {tr['n_train_images']} good images, bank {tr['bank_size']} x "
        f"{tr['feature_dim']}, {tr['seconds_total']:.1f} s on {tr['device']}, "
        f"ONNX parity {meta['export']['parity_max_abs_score_diff']:.1e}"
    )
    return 0


def cmd_train_unified(args: argparse.Namespace) -> int:
    """Base step (--categories) or incremental step (--resume RUN --add ...) of the unified model."""
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_unified import TrainUnifiedParams

    if bool(args.resume) == bool(args.categories):
        print("error: give --categories for a base step, or --resume RUN_DIR with --add for a new step",
              file=sys.stderr)
        return 2
    if args.resume and not args.add:
        print("error: --resume needs --add with the new products", file=sys.stderr)
        return 2
    params = params_from_args(args, TrainUnifiedParams, exclude=("categories",))
    params["categories"] = [c.strip() for c in (args.add if args.resume else args.categories).split(",") if c.strip()]
    if args.naive:
        params.update(anchor_weight=0.0, compression_weight=0.0, project=False)
    check_params(TrainUnifiedParams, params)
    result = run_job("train_unified", params, _progress_printer("train"))
    print(f"unified model written to {result['run_dir']}: products {', '.join(result['products'])}")
    return 0


def cmd_train_detector(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_detector import TrainDetectorParams

    params = check_params(TrainDetectorParams, params_from_args(args, TrainDetectorParams))
    result = run_job("train_detector", params, _progress_printer("train"))
    meta = result["metadata"]
    tr, parity = meta["training"], meta["parity"]
    print(
        f"detector written to {result['run_dir']}: classes {', '.join(meta['classes'])}, "
        f"{tr['n_train_images']} training images, {tr['steps']} steps, {tr['seconds_total']:.1f} s on "
        f"{tr['device']}, ONNX parity {parity['max_abs_score_diff']:.1e} (score), "
        f"{parity['max_abs_box_diff_px']:.1e} px (boxes)"
    )
    return 0


def cmd_train_open_detector(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_detector import TrainOpenDetectorParams

    params = check_params(TrainOpenDetectorParams, params_from_args(args, TrainOpenDetectorParams))
    result = run_job("train_open_detector", params, _progress_printer("train"))
    meta = result["metadata"]
    tr, val = meta["training"], meta["validation"]
    print(
        f"open-set detector written to {result['run_dir']}: known classes {', '.join(meta['classes'])}, "
        f"{tr['n_train_images']} training images, {tr['steps']} steps, {tr['seconds_total']:.1f} s on "
        f"{tr['device']}; validation mAP@0.5 {val['map50'] if val['map50'] is None else round(val['map50'], 3)}; "
        f"search other classes with --prompts FILE in eval / infer"
    )
    return 0


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_defect_segmentation import TrainSegmentationParams
    from engine.reports import fmt_metric as f

    params = params_from_args(args, TrainSegmentationParams, exclude=("extra",))
    if args.extra:
        params["extra"] = list(args.extra)
    check_params(TrainSegmentationParams, params)
    result = run_job("train_segmentation", params, _progress_printer("train"))
    meta = result["metadata"]
    tr, val, parity = meta["training"], meta["validation"], meta["parity"]
    per_class = "  ".join(f"{k} {f(v)}" for k, v in (val.get("iou_per_class") or {}).items())
    print(
        f"defect segmentation model written to {result['run_dir']}: classes {', '.join(meta['classes'])}, "
        f"{tr['n_dataset_images']} dataset + {tr['n_extra_images']} extra training images, {tr['steps']} steps, "
        f"{tr['seconds_total']:.1f} s on {tr['device']}, ONNX parity {parity['max_abs_probability_diff']:.1e}\n"
        f"held out ({val.get('n_images', 0)} images): mIoU {f(val.get('miou'))}  IoU per class: {per_class}"
    )
    return 0


def cmd_pretrain_backbone(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_agssp_pretrain import PretrainBackboneParams

    params = check_params(PretrainBackboneParams, params_from_args(args, PretrainBackboneParams))
    result = run_job("pretrain_backbone", params, _progress_printer("pretrain"))
    meta = result["metadata"]
    last = meta["loss_history"][-1] if meta["loss_history"] else {}
    print(f"pretrained trunk written to {result['run_dir']}: {meta['n_images']} pool images, {meta['steps']} "
          f"steps, {meta['seconds']:.1f} s on {meta['device']}; last epoch energy loss {last.get('energy', 0):.3f}, "
          f"distill {last.get('distill', 0):.3f}. Train a detector from it: defectscope train detector --init "
          f"{result['run_dir']} ...")
    return 0


def cmd_pseudo_boxes(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_agssp import PseudoBoxesParams
    from engine.pseudo_pool_format import pool_summary, read_pool

    params = params_from_args(args, PseudoBoxesParams, exclude=("pool", "exclude"))
    params.update(pool=list(args.pool), exclude=list(args.exclude or []))
    check_params(PseudoBoxesParams, params)
    result = run_job("pseudo_boxes", params, _progress_printer("pseudo-boxes"))
    print(f"pseudo boxes written to {result['out']}: {pool_summary(read_pool(result['out']))}, "
          f"{result['seconds']:.0f} s")
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_synthesis import SynthesizeParams

    params = params_from_args(args, SynthesizeParams)
    check_params(SynthesizeParams, params)
    result = run_job("synthesize", params, _progress_printer("synthesize"))
    per_type = ", ".join(f"{k} {v}" for k, v in result["per_type"].items())
    donors = ", ".join(f"{k} {len(v)}" for k, v in result["donors"].items())
    print(f"synthetic set written to {result['run_dir']}: {result['n_images']} images ({per_type}); real donors "
          f"per type: {donors}; train with --extra {result['run_dir']}")
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_generator import TrainGeneratorParams

    params = params_from_args(args, TrainGeneratorParams)
    check_params(TrainGeneratorParams, params)
    result = run_job("train_generator", params, _progress_printer("train"))
    meta = result["metadata"]
    tr = meta["training"]
    print(f"generator written to {result['run_dir']}: classes {', '.join(meta['classes'])}; steps {tr['steps']}, "
          f"seconds {tr['seconds']}, parameters {tr['parameters']} on {tr['device']}; sample it with "
          f"defectscope sample-generator --generator {result['run_dir']} --out SYN_DIR")
    return 0


def cmd_sample_generator(args: argparse.Namespace) -> int:
    from app.param_options import check_params, params_from_args
    from engine.jobs import run_job
    from engine.jobs.kinds_generator import SampleGeneratorParams

    params = params_from_args(args, SampleGeneratorParams)
    check_params(SampleGeneratorParams, params)
    result = run_job("sample_generator", params, _progress_printer("sample"))
    per_type = ", ".join(f"{k} {v}" for k, v in result["per_type"].items())
    print(f"synthetic set written to {result['run_dir']}: {result['n_images']} images ({per_type}) from "
          f"{result['sampling']['drawn']} drawn; train with --extra {result['run_dir']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.jobs import run_job

    params = {"model": args.model, "data": args.data, "category": args.category, "report": args.report,
              "device": args.device, "prompts": args.prompts}
    r = run_job("eval", params, _progress_printer("eval"))
    print(r.get("summary") or _format_metrics(r))  # a detector's evaluation states its own metrics
    for note in r.get("notes") or []:
        print(f"note: {note}")
    if args.report:
        print(f"report written to {args.report}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from engine.infer import infer

    summary = infer(args.model, args.inputs, args.out, device=args.device, prompts=args.prompts)
    n_scored, n_ng = len(summary["results"]), summary["n_ng"]
    print(summary.get("summary") or f"{n_scored} images scored on {summary['provider']}: {n_ng} NG, "
          f"{n_scored - n_ng} OK; heatmaps and scores.json in {args.out}")
    for note in summary["notes"]:
        print(f"note: {note}")
    for err in summary["errors"]:
        print(f"skipped {err['path']}: {err['error']}", file=sys.stderr)
    if not summary["results"]:
        return EXIT_USER_ERROR
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.datasets import formats, load_dataset

    if args.action == "formats":
        from engine.datasets.writers import writer_formats

        writers = writer_formats()
        for name, reader in formats().items():
            print(f"{name:10s} {'read+write' if name in writers else 'read      '}  {reader.description}")
        return 0
    ds = load_dataset(args.root, format=args.format, category=args.category)
    if args.action == "export":
        from engine.datasets.writers import export_dataset
        from engine.errors import DefectScopeError

        if not args.to or not args.out:
            raise DefectScopeError("datasets export needs --to FORMAT and --out FOLDER")
        report = export_dataset(ds, Path(args.out), args.to, overwrite=args.overwrite)
        print(report.summary())
        return 0
    counts = Counter((s.category or "-", s.split, s.label, s.defect_type or "-") for s in ds.samples)
    print(f"{ds.root}: format {ds.format}, {len(ds.samples)} images, {len(ds.issues)} issues")
    for (cat, split, label, defect), n in sorted(counts.items()):
        print(f"  {cat:20s} {split:11s} {label:10s} {defect:20s} {n}")
    for issue in ds.issues[: args.max_issues]:
        print(f"  issue: {issue}")
    if len(ds.issues) > args.max_issues:
        print(f"  ... and {len(ds.issues) - args.max_issues} more issues")
    return 0


def cmd_demo_part(args: argparse.Namespace) -> int:
    """Write a generated high-resolution part set (engine.datasets.demo_highres) in the MVTec layout."""
    from engine.datasets.demo_highres import generate_highres
    from engine.errors import DefectScopeError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DefectScopeError(f"{out}: the folder is not empty (choose a new one)")
    root = generate_highres(out, args.part, args.n_train, args.n_test_good, args.n_test_defect, args.seed,
                            args.height, args.width)
    print(f"{args.part} parts written to {root} (MVTec layout with masks)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo dataset if needed, train on one category, evaluate, and write heatmaps."""
    from engine.datasets.demo import ensure_demo_dataset
    from engine.home import default_data_home
    from engine.infer import infer
    from engine.jobs import run_job

    home = Path(args.home) if args.home else default_data_home()
    root = ensure_demo_dataset(home / "demo")
    run_dir = home / "runs" / f"demo_{args.category}"
    print(f"demo dataset: {root}")
    run_job("train_anomaly", {"data": str(root), "category": args.category, "out": str(run_dir),
                              "device": args.device}, _progress_printer("train"))
    report = run_dir / "eval_report.json"
    r = run_job("eval", {"model": str(run_dir), "data": str(root), "category": args.category,
                         "report": str(report), "device": args.device}, _progress_printer("eval"))
    print(_format_metrics(r))
    test_dir = root / args.category / "test"
    summary = infer(run_dir, [test_dir], run_dir / "heatmaps", device=args.device)
    print(f"model: {run_dir}\nreport: {report}\nheatmaps: {run_dir / 'heatmaps'} ({len(summary['results'])} images)")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from engine.errors import DefectScopeError

    try:
        from app.gui.main import GuiOptions, run_gui
    except ImportError as exc:
        raise DefectScopeError(f"the GUI needs the gui extra (pip install 'defectscope[gui]'): {exc}") from None
    for name in ("dataset", "model"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_dir():
            raise DefectScopeError(f"--{name} {value}: no such folder")
    return run_gui(GuiOptions(
        dataset=Path(args.dataset) if args.dataset else None, category=args.category,
        model=Path(args.model) if args.model else None, score=args.score, demo=args.demo,
        screenshot=Path(args.screenshot) if args.screenshot else None, quit_after_ms=args.quit_after_ms,
        quit_when_scored=args.quit_when_scored, engine=not args.no_engine,
    ))


def cmd_engine_serve(args: argparse.Namespace) -> int:
    from engine.home import default_data_home
    from engine.server import layout
    from engine.server.serve import serve

    data_dir = Path(args.data_dir) if args.data_dir else layout.default_data_dir(default_data_home())
    serve(
        args.host, args.port, data_dir, Path(args.token_file) if args.token_file else None, args.max_jobs,
        data_roots=[Path(r) for r in args.data_root] or None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_self_signed=args.tls_self_signed,
        ray_address=args.ray_address,
        ray_token_file=Path(args.ray_token_file) if args.ray_token_file else None,
        parent_pid=args.parent_pid,
        upload_cache_gb=args.upload_cache_gb,
    )
    return 0


def _engine_client(args: argparse.Namespace) -> EngineClient:
    from engine.client import EngineClient
    from engine.errors import DefectScopeError
    from engine.home import default_data_home
    from engine.server import layout

    token = os.environ.get("DEFECTSCOPE_TOKEN")
    token_file = (Path(args.token_file) if args.token_file
                  else layout.token_file(layout.default_data_dir(default_data_home())))
    if args.token_file or (token is None and token_file.is_file()):
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise DefectScopeError(f"{token_file}: cannot read the token file ({exc.strerror})") from None
    return EngineClient(args.engine or DEFAULT_ENGINE_URL, token, verify=args.tls_ca or True)


def _upload_printer() -> Callable[[int, int], None]:
    report = _progress_printer("upload")

    def progress(done: int, total: int) -> None:
        report(done / total if total else 1.0, f"{done / 1e6:.1f} of {total / 1e6:.1f} MB")

    return progress


def _upload(client: EngineClient, path: Path) -> str:
    """Upload a local folder or file; the ref names it to the engine (a file as a path inside its upload)."""
    result = client.upload(path, progress=_upload_printer())
    print(f"uploaded {path}: {result.files} files, {result.bytes / 1e6:.1f} MB, sent {result.blobs_sent} new or "
          f"changed ({result.bytes_sent / 1e6:.1f} MB) in {result.seconds:.1f} s -> {result.ref}", file=sys.stderr)
    return result.ref


def _upload_path_params(client: EngineClient, kind_name: str, params: dict) -> dict:
    """Path parameters naming an existing local file or folder, uploaded and replaced by their refs; refs
    ("job:...", "upload:...") and paths that do not exist here (the engine's own) go as they are."""
    from engine.jobs.registry import get_job_kind
    from engine.server import layout

    def upload_if_local(value: object) -> object:
        if not isinstance(value, str) or layout.looks_like_artifact_ref(value) or layout.looks_like_upload_ref(value):
            return value
        local = Path(value).expanduser()
        return _upload(client, local) if local.exists() else value

    out = dict(params)
    for name in get_job_kind(kind_name).path_params:
        if name not in params:
            continue
        value = params[name]
        # A list parameter (e.g. several pool folders): each item is uploaded on its own.
        out[name] = [upload_if_local(v) for v in value] if isinstance(value, list) else upload_if_local(value)
    return out


def _parse_params(items: list[str], raw_json: str | None) -> dict:
    from engine.errors import DefectScopeError

    params: dict = {}
    if raw_json:
        try:
            params = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise DefectScopeError(f"--params: not valid JSON ({exc.msg} at column {exc.colno})") from None
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DefectScopeError(f"--param '{item}': expected KEY=VALUE")
        try:
            params[key] = json.loads(value)  # numbers, booleans, lists; anything else stays a string
        except json.JSONDecodeError:
            params[key] = value
    return params


def cmd_jobs(args: argparse.Namespace) -> int:
    with _engine_client(args) as client:
        action = args.jobs_command
        if action == "upload":
            print(_upload(client, Path(args.folder)))
        elif action == "submit":
            params = _parse_params(args.param, args.params)
            if args.engine is not None and not args.no_upload:  # an engine named by URL may not see our files
                params = _upload_path_params(client, args.kind, params)
            job_id = client.submit(args.kind, params)
            print(job_id)
            if args.wait:
                for ev in client.events(job_id):
                    if ev["type"] == "progress":
                        print(f"[{job_id}] {ev['value'] * 100:5.1f}% {ev['message']}", file=sys.stderr)
                job = client.wait(job_id)
                print(f"{job_id} {job.state}" + (f": {job.error}" if job.error else ""))
                return 0 if job.succeeded else 1
        elif action == "uploads":  # the engine's upload cache: what it keeps, how full, what goes first
            cache = client.upload_cache()
            print(f"upload cache {cache['used_bytes'] / 1e6:.1f} MB of {cache['limit_bytes'] / 1e6:.0f} MB; "
                  f"eviction: {cache['eviction']}")
            for u in cache["uploads"]:
                used = time.strftime("%Y-%m-%d %H:%M", time.localtime(u["last_used"]))
                print(f"{u['ref']}  {u['files']:6d} files {u['bytes'] / 1e6:9.1f} MB  last used {used}"
                      + ("  (in use by a job)" if u.get("in_use") else ""))
        elif action == "list":
            for job in client.jobs():
                print(f"{job.id}  {job.kind:14s} {job.state:10s} {job.progress * 100:5.1f}%  {job.message}")
        elif action == "show":
            print(json.dumps(client.job(args.id).to_dict(), indent=2))
        elif action == "logs":
            print(client.logs(args.id), end="")
        elif action == "cancel":
            client.cancel(args.id)
            print(f"{args.id} cancelling")
        elif action == "artifacts":
            if args.download:
                for path in client.download(args.id, Path(args.download)):
                    print(path)
            else:
                for art in client.artifacts(args.id):
                    print(f"{art['sha256']}  {art['size']:>10d}  {art['name']}")
    return 0


def _format_metrics(r: dict) -> str:
    from engine.reports import fmt_metric as f

    return (
        f"image AUROC {f(r['image_auroc'])}  pixel AUROC {f(r['pixel_auroc'])}  AU-PRO {f(r['aupro'])}  "
        f"F1-max {f(r['f1_max'])} @ {f(r['threshold'])}  ({r['n_test']} test images, "
        f"{r['latency_ms']:.1f} ms/image on {r['provider']})"
    )


def build_parser() -> argparse.ArgumentParser:
    # pydantic only (no torch): the params models are the options' one source
    from app.param_options import add_param_options
    from engine.jobs.fields import describe_params
    from engine.jobs.kinds import EvalParams, TrainAnomalyParams
    from engine.jobs.kinds_agssp import PseudoBoxesParams
    from engine.jobs.kinds_agssp_pretrain import PretrainBackboneParams
    from engine.jobs.kinds_defect_segmentation import TrainSegmentationParams
    from engine.jobs.kinds_detector import TrainDetectorParams, TrainOpenDetectorParams
    from engine.jobs.kinds_generator import SampleGeneratorParams, TrainGeneratorParams
    from engine.jobs.kinds_synthesis import SynthesizeParams
    from engine.jobs.kinds_unified import TrainUnifiedParams

    p = argparse.ArgumentParser(prog="defectscope", description="DefectScope: industrial visual inspection workbench")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="method", required=True)
    # Options of job-backed commands come from the jobs' params models: defaults and choices are written there once.
    ta = train_sub.add_parser("anomaly", help="memory-bank anomaly model from good images")
    add_param_options(ta, TrainAnomalyParams)
    ta.set_defaults(func=cmd_train)
    tu = train_sub.add_parser("unified", help="one model for many products, extended product by product (IUF)")
    add_param_options(tu, TrainUnifiedParams, optional=("categories",),
                      help={"categories": "base step: products to learn, e.g. A,B,C",
                            "resume": "incremental step: the previous step's run directory"})
    tu.add_argument("--add", default=None, help="incremental step: the new products, e.g. D,E")
    tu.add_argument("--naive", action="store_true", help="plain fine-tuning (no anchoring, projection or "
                                                         "compression): the lower bound for comparisons")
    tu.set_defaults(func=cmd_train_unified)
    td = train_sub.add_parser("detector", help="box detector (defect classes with boxes, or MVTec masks)")
    add_param_options(td, TrainDetectorParams)
    td.set_defaults(func=cmd_train_detector)
    to = train_sub.add_parser("open-detector", help="open-set box detector: classes asked for by text or example "
                                                    "boxes at inference time")
    add_param_options(to, TrainOpenDetectorParams)
    to.set_defaults(func=cmd_train_open_detector)
    tsg = train_sub.add_parser("segmentation", help="defect segmentation: one class per defect type, learned from "
                                                     "masks (real, plus --extra folders such as synthetic defects)")
    seg_fields = describe_params(TrainSegmentationParams)
    # Folders are listed, not comma-joined: a path may contain a comma.
    tsg.add_argument("--extra", nargs="+", default=None, metavar="DIR", help=seg_fields["extra"].description)
    add_param_options(tsg, TrainSegmentationParams, exclude=("extra",))
    tsg.set_defaults(func=cmd_train_segmentation)

    pre = sub.add_parser("pretrain", help="pretrain on unlabelled images (anomaly-guided, AGSSP)")
    pre_sub = pre.add_subparsers(dest="stage", required=True)
    pre_bb = pre_sub.add_parser("backbone", help="the detector's trunk learns from a pseudo_boxes pool's anomaly maps")
    add_param_options(pre_bb, PretrainBackboneParams)
    pre_bb.set_defaults(func=cmd_pretrain_backbone)
    pb = sub.add_parser("pseudo-boxes", help="anomaly maps of an unlabelled image pool -> one-class pseudo boxes "
                                             "and map targets for pretraining (AGSSP)")
    pseudo_fields = describe_params(PseudoBoxesParams)
    # Folders are listed, not comma-joined: a path may contain a comma.
    pb.add_argument("--pool", nargs="+", required=True, metavar="DIR", help=pseudo_fields["pool"].description)
    pb.add_argument("--exclude", nargs="+", default=[], metavar="ROOT", help=pseudo_fields["exclude"].description)
    add_param_options(pb, PseudoBoxesParams, exclude=("pool", "exclude"))
    pb.set_defaults(func=cmd_pseudo_boxes)

    tg = train_sub.add_parser("generator", help="Defect-Gen diffusion generator of defective images with masks")
    add_param_options(tg, TrainGeneratorParams)
    tg.set_defaults(func=cmd_train_generator)
    sg = sub.add_parser("sample-generator", help="sample a Defect-Gen generator into a synthetic set (--extra)")
    add_param_options(sg, SampleGeneratorParams)
    sg.set_defaults(func=cmd_sample_generator)
    syn = sub.add_parser("synthesize", help="synthetic defective images with their masks (for training: --extra)")
    add_param_options(syn, SynthesizeParams)
    syn.set_defaults(func=cmd_synthesize)

    ev = sub.add_parser("eval", help="evaluate a model on a dataset's test split")
    add_param_options(ev, EvalParams)
    ev.set_defaults(func=cmd_eval)

    inf = sub.add_parser("infer", help="score images; write heatmaps and scores.json")
    inf.add_argument("--model", required=True)
    inf.add_argument("--out", required=True)
    add_param_options(inf, EvalParams, only=("device", "prompts"))
    inf.add_argument("inputs", nargs="+", help="images or folders")
    inf.set_defaults(func=cmd_infer)

    ds = sub.add_parser("datasets", help="inspect datasets")
    ds.add_argument("action", choices=["inspect", "formats", "export"])
    ds.add_argument("root", nargs="?", default=".")
    ds.add_argument("--format", default="auto")
    ds.add_argument("--category", default=None)
    ds.add_argument("--max-issues", type=int, default=20)
    ds.add_argument("--to", default=None, help="export: coco, yolo, voc, labelme or mvtec")
    ds.add_argument("--out", default=None, help="export: target folder (must be empty or new)")
    ds.add_argument("--overwrite", action="store_true", help="export: replace a non-empty target folder")
    ds.set_defaults(func=cmd_datasets)

    eng = sub.add_parser("engine", help="run the engine process")
    eng_sub = eng.add_subparsers(dest="engine_command", required=True)
    srv = eng_sub.add_parser("serve", help="serve the job API (loopback by default)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument("--data-dir", default=None, help="jobs database and job folders (default: user data dir)")
    srv.add_argument("--token-file", default=None, help="bearer token; required off loopback")
    srv.add_argument("--max-jobs", type=int, default=1, help="jobs running at once")
    srv.add_argument("--data-root", action="append", default=[],
                     help="folder job inputs must lie in (repeatable; default: anywhere)")
    srv.add_argument("--tls-cert", default=None)
    srv.add_argument("--tls-key", default=None)
    srv.add_argument("--tls-self-signed", action="store_true",
                     help="serve HTTPS with a certificate generated into DATA_DIR/tls")
    srv.add_argument("--ray-address", default=None,
                     help="run jobs on this existing Ray cluster (host:port of its head) instead of locally")
    srv.add_argument("--ray-token-file", default=None,
                     help="token of a Ray cluster started with RAY_AUTH_MODE=token")
    srv.add_argument("--parent-pid", type=int, default=None,
                     help="stop when this process exits (the GUI passes its own pid)")
    srv.add_argument("--upload-cache-gb", type=float, default=50.0,
                     help="size limit of the upload cache; least recently used uploads are evicted beyond it")
    srv.set_defaults(func=cmd_engine_serve)

    jobs = sub.add_parser("jobs", help="submit and follow jobs on an engine")
    jobs.add_argument("--engine", default=None,
                      help=f"engine URL (default {DEFAULT_ENGINE_URL}); when given, `submit` uploads local paths")
    jobs.add_argument("--token-file", default=None,
                      help="bearer token file (default: $DEFECTSCOPE_TOKEN or the local engine's token)")
    jobs.add_argument("--tls-ca", default=None, help="certificate to trust (e.g. the engine's self-signed cert.pem)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    js = jobs_sub.add_parser("submit", help="submit a job: KIND with --param key=value ...")
    js.add_argument("kind")
    js.add_argument("--param", action="append", default=[], help="KEY=VALUE (JSON values allowed)")
    js.add_argument("--params", default=None, help="all parameters as one JSON object")
    js.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    js.add_argument("--no-upload", action="store_true",
                    help="with --engine: send path parameters as they are (the engine reads them itself)")
    ju = jobs_sub.add_parser("upload", help="upload a folder (only files the engine lacks); prints its ref")
    ju.add_argument("folder")
    jobs_sub.add_parser("uploads", help="the engine's upload cache: size, limit, eviction rule, each upload")
    jobs_sub.add_parser("list", help="list jobs")
    for name, text in (("show", "a job's state as JSON"), ("logs", "a job's log"), ("cancel", "cancel a job")):
        jobs_sub.add_parser(name, help=text).add_argument("id")
    ja = jobs_sub.add_parser("artifacts", help="list (or --download) a job's artifacts, checksums verified")
    ja.add_argument("id")
    ja.add_argument("--download", default=None, metavar="DIR")
    jobs.set_defaults(func=cmd_jobs)

    demo = sub.add_parser("demo", help="generate the demo dataset, train, evaluate and write heatmaps")
    demo.add_argument("--category", default="washer")
    demo.add_argument("--home", default=None, help="data folder (default: $DEFECTSCOPE_HOME or the user data dir)")
    add_param_options(demo, TrainAnomalyParams, only=("device",))
    demo.set_defaults(func=cmd_demo)

    dp = sub.add_parser("demo-part", help="generate parts at real shape and resolution: an elongated shaft with "
                                          "hairline cracks, or a 24 MP panel with 15 px defects (MVTec layout)")
    dp.add_argument("part", choices=["shaft", "panel"])
    dp.add_argument("--out", required=True, help="new folder for the set")
    for name, default in (("n-train", 40), ("n-test-good", 10), ("n-test-defect", 10), ("seed", 0)):
        dp.add_argument(f"--{name}", type=int, default=default)
    dp.add_argument("--height", type=int, default=None, help="image height (default: the part's: 500 / 4000)")
    dp.add_argument("--width", type=int, default=None, help="image width (default: the part's: 1250 / 6000)")
    dp.set_defaults(func=cmd_demo_part)

    gui = sub.add_parser("gui", help="open the workbench")
    gui.add_argument("--dataset", default=None, help="dataset folder to open")
    gui.add_argument("--category", default=None)
    gui.add_argument("--demo", action="store_true",
                     help="open the demo dataset; train a demo model through the engine if none exists; score it")
    gui.add_argument("--model", default=None, help="model folder to activate")
    gui.add_argument("--score", action="store_true", help="score the dataset with --model once it is open")
    gui.add_argument("--screenshot", default=None, help="save the window as PNG (before quitting, with --quit-after-ms)")
    gui.add_argument("--quit-after-ms", type=int, default=None, help="quit after N ms (scripts and tests)")
    gui.add_argument("--quit-when-scored", action="store_true",
                     help="quit (after the screenshot) once the dataset's scores are shown")
    gui.add_argument("--no-engine", action="store_true", help="do not start or connect to an engine")
    gui.set_defaults(func=cmd_gui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["_worker"]:
        # Hidden: the engine starts job workers through the same program (works when frozen by PyInstaller).
        from engine.worker import main as worker_main

        return worker_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from engine.errors import DefectScopeError

    try:
        return int(args.func(args) or 0)
    except DefectScopeError as exc:
        print(f"defectscope: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("defectscope: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        # Unexpected failures: one line for the user, the traceback in a log file for the bug report.
        fd, log_path = tempfile.mkstemp(prefix="defectscope-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"argv": sys.argv}) + "\n")
            traceback.print_exc(file=fh)
        print(f"defectscope: internal error: {exc.__class__.__name__}: {exc} (details: {log_path})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
