"""Training steps of the unified model: a base step, then incremental steps without the old products' images.

Each step trains on the good training images of its products only. Loss = reconstruction MSE (with feature
jitter) + anchor_weight * anchoring to the previous step's weights + compression_weight * compression of the
decoder output. From the second step on, gradients of the FFN output layers are projected away from the old
products' activation directions before every optimiser step. At the end of every step the activations of this
step's images are captured into the bases (so the next step protects them too). Feature tokens of the frozen
backbone are computed once per step and kept (the backbone never trains).

Training runs on `StepConfig.device` ("auto": the GPU when torch sees one); the saved state is always on the CPU,
so a step trained on a GPU server resumes on a CPU-only PC and the reverse.

Every image reaches the model through the exported graph's own preprocessing, run by ONNX Runtime on the raw
uint8 image (`OnnxPreprocess`, as the memory-bank trainer does): the features trained on and the held-out scores
the threshold is calibrated from are those inspection computes, not a torch resize that differs at the borders.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets.imageio import read_image
from engine.datasets.types import Sample
from engine.errors import DatasetError, DefectScopeError
from engine.jobs.registry import Progress
from trainers.common.device import resolve_device
from trainers.common.onnx_graph import check_image_size, preprocess_model
from trainers.patchcore.fit import calibrate
from trainers.unified.incremental import ActivationBases, anchoring_loss, capture_ffn_inputs, compression_loss
from trainers.unified.model import RESIZE, UnifiedConfig, UnifiedModel

STATE_FILE = "unified_state.pt"


@dataclass
class StepConfig:
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    anchor_weight: float = 0.0  # 0 = naive fine-tuning (the lower bound); IUF uses > 0 from the second step
    compression_weight: float = 0.0
    compression_keep: int = 32  # singular values kept free by the compression loss
    project: bool = True  # gradient projection from the second step on
    capture_energy: float = 0.95
    capture_max_rank: int = 64
    max_images: int | None = None  # training images per product at most (evenly spaced), None = all
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda


@dataclass
class UnifiedState:
    """What a step leaves for the next: config, weights, bases and the products learned so far."""

    config: UnifiedConfig
    weights: dict[str, torch.Tensor]
    bases: ActivationBases = field(default_factory=ActivationBases)
    products: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    # per product: (center, threshold) of raw scores on its held-out good images, measured in its own step
    product_stats: dict[str, list[float]] = field(default_factory=dict)

    def normalisation(self) -> tuple[float, float]:
        """One (center, threshold) for all products: median center, largest threshold (no product's known-good
        parts are rejected by default)."""
        if not self.product_stats:
            return 0.0, 1.0
        stats = np.array(list(self.product_stats.values()))
        return float(np.median(stats[:, 0])), float(stats[:, 1].max())

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"config": asdict(self.config), "weights": self.weights, "bases": self.bases.state(),
                    "products": self.products, "steps": self.steps, "product_stats": self.product_stats},
                   folder / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> UnifiedState:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            raise DefectScopeError(f"{folder}: not a unified model run (no {STATE_FILE})")
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(UnifiedConfig(**d["config"]), d["weights"], ActivationBases.from_state(d["bases"]),
                   list(d["products"]), list(d["steps"]), dict(d.get("product_stats", {})))


def evenly_spaced(items: list, n: int | None) -> list:
    """At most `n` items spread over the whole list (keeps the mix of a folder-ordered list), all when n is None."""
    if not n or len(items) <= n:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n)]


def labelled_test_samples(data: Path, product: str, max_test: int | None = None) -> list[Sample]:
    """A product's labelled test samples, at most `max_test` of them, evenly spaced (the same subset for every
    method a benchmark compares)."""
    ds = load_dataset(Path(data), category=product)
    return evenly_spaced([s for s in ds.samples if s.split == "test" and s.label in (GOOD, DEFECTIVE)], max_test)


def product_images(data: Path, products: Sequence[str], holdout_fraction: float = 0.1, max_images: int | None = None
                   ) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(training, held-out) good images per product (a category folder per product). Held out: the validation
    split when there is one, else the last `holdout_fraction` of train (at least one image)."""
    train: dict[str, list[Path]] = {}
    hold: dict[str, list[Path]] = {}
    for p in products:
        ds = load_dataset(Path(data), category=p)
        imgs = [s.image_path for s in ds.samples if s.label == GOOD and s.split == "train"]
        val = [s.image_path for s in ds.samples if s.label == GOOD and s.split == "validation"]
        if len(imgs) + len(val) < 2:
            raise DatasetError(f"{data}: product '{p}' needs at least 2 good training images")
        if not val:
            k = max(1, round(holdout_fraction * len(imgs)))
            imgs, val = imgs[:-k], imgs[-k:]
        if max_images:
            imgs, val = evenly_spaced(imgs, max_images), evenly_spaced(val, max(2, max_images // 4))
        train[p], hold[p] = imgs, val
    return train, hold


class OnnxPreprocess:
    """Image file -> 1 x 3 x S x S float tensor through the exported graph's preprocessing (ONNX Runtime)."""

    def __init__(self, image_size: int) -> None:
        self.session = ort.InferenceSession(preprocess_model(image_size, RESIZE).SerializeToString(),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, path: Path) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": read_image(path)})[0])


def _tokens(model: UnifiedModel, paths: list[Path], pre: OnnxPreprocess, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model.tokens(pre(p).to(device))[0] for p in paths])  # N x L x D


def resumed_config(state: UnifiedState, cfg: UnifiedConfig | None, source: str | Path = "the resumed run"
                   ) -> UnifiedConfig:
    """The saved architecture of a run being extended; `cfg` (None: keep the saved one) must not differ from it:
    the weights and bases are for that grid and those layers, so a different value is refused, never replaced."""
    if cfg is None or cfg == state.config:
        return state.config
    changed = [f"{f.name} {getattr(cfg, f.name)!r} differs from the saved {getattr(state.config, f.name)!r}"
               for f in fields(UnifiedConfig) if getattr(cfg, f.name) != getattr(state.config, f.name)]
    raise DefectScopeError(f"{source}: {'; '.join(changed)} of the model being extended (leave it empty to keep "
                           f"the saved value)")


def train_step(state: UnifiedState | None, data: Path, new_products: Sequence[str], cfg: UnifiedConfig | None,
               step_cfg: StepConfig, progress: Progress | None = None) -> UnifiedState:
    """One step: the base step when `state` is None (cfg None: UnifiedConfig()), else an incremental step adding
    `new_products` with the saved architecture (a `cfg` that differs from it is refused, see `resumed_config`)."""
    report = progress or (lambda _f, _m: None)
    torch.manual_seed(step_cfg.seed)
    cfg = resumed_config(state, cfg) if state is not None else cfg or UnifiedConfig()
    check_image_size(cfg.image_size)
    if state is not None:
        overlap = sorted(set(new_products) & set(state.products))
        if overlap:
            raise DefectScopeError(f"products already learned: {', '.join(overlap)}")
    device = resolve_device(step_cfg.device)
    model = UnifiedModel(cfg)
    if state is not None:
        model.reconstructor.load_state_dict(state.weights)
    model.to(device)
    pre = OnnxPreprocess(cfg.image_size)
    images, held_out = product_images(data, new_products, max_images=step_cfg.max_images)
    tokens = _tokens(model, [p for ps in images.values() for p in ps], pre, device)
    rec = model.reconstructor
    layers = {f"ffn{i}": layer for i, layer in enumerate(rec.ffn_out_layers())}
    # A copy, so the input state stays as it was.
    bases = copy.deepcopy(state.bases).to(device) if state is not None else ActivationBases()
    previous = {n: p.detach().clone() for n, p in rec.named_parameters()} if state is not None else {}
    opt = torch.optim.AdamW(rec.parameters(), lr=step_cfg.lr, weight_decay=step_cfg.weight_decay)
    gen = torch.Generator().manual_seed(step_cfg.seed)
    t0 = time.perf_counter()
    losses: list[float] = []
    rec.train()
    epochs_done = 0
    for epoch in range(step_cfg.epochs):
        perm = torch.randperm(len(tokens), generator=gen)
        for i in range(0, len(tokens), step_cfg.batch_size):
            t = tokens[perm[i : i + step_cfg.batch_size]]
            out, dec = rec(t, jitter=True)
            loss = F.mse_loss(out, t)
            if previous and step_cfg.anchor_weight > 0:
                loss = loss + step_cfg.anchor_weight * anchoring_loss(rec, previous)
            if step_cfg.compression_weight > 0:
                loss = loss + step_cfg.compression_weight * compression_loss(dec, step_cfg.compression_keep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if state is not None and step_cfg.project:
                bases.project(layers)
            opt.step()
            losses.append(float(loss.detach()))
        epochs_done = epoch + 1
        report(epochs_done / step_cfg.epochs, f"step {len(state.steps) + 1 if state else 1}, epoch {epochs_done}: "
                                              f"loss {np.mean(losses[-10:]):.4f}")
        if step_cfg.time_budget_s and time.perf_counter() - t0 > step_cfg.time_budget_s:
            break
    rec.eval()
    # This step's products are "old" from now on: capture their activations (every step, whatever the epochs).
    acts = capture_ffn_inputs(layers, lambda: rec(tokens))
    bases.capture(acts, step_cfg.capture_energy, step_cfg.capture_max_rank)
    stats = dict(state.product_stats) if state else {}
    with torch.no_grad():
        for prod, paths in held_out.items():
            scores = [float(model(pre(p).to(device))[0][0]) for p in paths]
            stats[prod] = list(calibrate(scores, 3.0))
    steps = [*(state.steps if state else []), {"products": list(new_products), "epochs": epochs_done,
                                               "final_loss": round(float(np.mean(losses[-10:])), 5),
                                               "seconds": round(time.perf_counter() - t0, 1),
                                               "config": asdict(step_cfg)}]
    return UnifiedState(cfg, {k: v.detach().cpu().clone() for k, v in rec.state_dict().items()}, bases.to("cpu"),
                        [*(state.products if state else []), *new_products], steps, stats)


def evaluate_products(state: UnifiedState, data: Path, products: Sequence[str] | None = None,
                      max_test: int | None = None, device: str = "cpu") -> dict[str, dict]:
    """Image and pixel AUROC on each product's test split: the torch model on the exported graph's preprocessing
    (what the ONNX model scores, within the export's parity tolerance)."""
    import cv2

    from engine.datasets.imageio import read_mask
    from engine.metrics import evaluate_anomaly

    cfg = state.config
    model = UnifiedModel(cfg)
    model.reconstructor.load_state_dict(state.weights)
    dev = resolve_device(device)
    model.to(dev).eval()
    pre = OnnxPreprocess(cfg.image_size)
    out: dict[str, dict] = {}
    for p in products or state.products:
        test = labelled_test_samples(data, p, max_test)
        scores, maps, masks, labels = [], [], [], []
        with torch.no_grad():
            for s in test:
                score, amap = model(pre(s.image_path).to(dev))
                scores.append(float(score[0]))
                maps.append(amap[0, 0].cpu().numpy())
                labels.append(int(s.label == DEFECTIVE))
                masks.append(None if s.mask_path is None else cv2.resize(
                    read_mask(s.mask_path).astype(np.uint8), (cfg.image_size,) * 2,
                    interpolation=cv2.INTER_NEAREST) > 0)
        m = evaluate_anomaly(scores, labels, maps, masks)
        out[p] = {"image_auroc": round(m["image_auroc"], 4),
                  "pixel_auroc": None if m["pixel_auroc"] is None else round(m["pixel_auroc"], 4)}
    return out


def train_unified(data: str | Path, products: Sequence[str], out: str | Path, resume: str | Path | None = None,
                  cfg: UnifiedConfig | None = None, step_cfg: StepConfig | None = None,
                  progress: Progress | None = None) -> dict:
    """A base step (resume None) or an incremental step from the run in `resume`; writes the exported model
    (model.onnx + model.json) and the state to `out`. A resumed run never reads the earlier products' images and
    keeps the saved architecture: `cfg` None keeps it, a `cfg` that differs (e.g. another image_size) is refused
    before any training (`resumed_config`)."""
    import engine
    from trainers.unified.export import export_unified

    report = progress or (lambda _f, _m: None)
    state = UnifiedState.load(Path(resume)) if resume else None
    if state is not None:
        cfg = resumed_config(state, cfg, resume)
    new = train_step(state, Path(data), list(products), cfg, step_cfg or StepConfig(),
                     lambda f, m: report(0.9 * f, m))
    out_dir = Path(out)
    model = UnifiedModel(new.config)
    model.reconstructor.load_state_dict(new.weights)
    center, threshold = new.normalisation()
    report(0.92, "exporting ONNX")
    _, held = product_images(Path(data), list(products))
    meta = export_unified(model, center, threshold, out_dir, {
        "kind": "anomaly/unified", "category": None, "products": new.products,
        "dataset_root": str(Path(data).resolve()), "backbone": new.config.backbone,
        "training": {"steps": new.steps, "product_stats": new.product_stats, "resumed_from": str(resume or "")},
        "defectscope_version": engine.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        [p for ps in held.values() for p in ps][:2])
    new.save(out_dir)  # after the export: a model refused by the parity check leaves nothing to resume from
    report(1.0, f"products: {', '.join(new.products)}")
    return {"run_dir": str(out_dir), "products": new.products, "metadata": meta}
