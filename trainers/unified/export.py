"""Export a unified model as model.onnx + model.json: the memory-bank model's format, so the GUI, the CLI and the
engine run it unchanged (engine.runtime.AnomalyModel, score_dataset, the viewer).

The graph takes the original H x W x 3 uint8 image: resized inside to image_size x image_size ("stretch": the
learned queries are one per grid position, so the grid is fixed), reconstruction error map, blur, pooled-max score,
then the same normalisation as the memory-bank model (0 = a typical good part, 0.5 = the decision threshold),
and the map resized back to the original size.

The parity check feeds torch and ONNX Runtime the same RAW uint8 image, each preprocessing it its own way (torch
through trainers.common.torch_preprocess), so a resize that differs between training and inspection fails the
export instead of shipping; the largest score and map differences are recorded in model.json.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from engine.datasets.imageio import read_image
from trainers.common.io import atomic_write
from trainers.common.onnx_graph import CORE_INPUT, CORE_OUTPUTS, compose_anomaly_model
from trainers.common.torch_preprocess import onnx_resize, preprocess_torch
from trainers.patchcore.export import METADATA_FILE, MODEL_FILE, PARITY_TOLERANCE
from trainers.unified.model import RESIZE, UnifiedModel

# Normalised units like the score, but a max over every pixel rather than one pooled value: measured ~1e-5 on toy
# models, while a torch-antialias resize on one side (the trainer before issue 13) gives ~3e-2.
MAP_PARITY_TOLERANCE = 1e-3

TorchPreprocess = Callable[[np.ndarray, int], torch.Tensor]  # (H x W x 3 uint8, image_size) -> 1 x 3 x S x S


class ParityError(RuntimeError):
    """The exported graph and the torch model disagree on a raw image: the model is not published."""


class NormalisedUnified(nn.Module):
    """score/map -> 0.5 * (raw - center) / (threshold - center)."""

    def __init__(self, model: UnifiedModel, center: float, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.center = float(center)
        self.span = float(max(threshold - center, 1e-6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, amap = self.model(x)
        return 0.5 * (score - self.center) / self.span, 0.5 * (amap - self.center) / self.span


def raw_parity(model: nn.Module, onnx_bytes: bytes, image_size: int, images: list[np.ndarray],
               preprocess: TorchPreprocess = preprocess_torch) -> tuple[float, float]:
    """(max |score difference|, max |map difference|) between torch and ONNX Runtime over `images`, each side
    starting from the raw H x W x 3 uint8 image: torch preprocesses with `preprocess`, ONNX with its own nodes."""
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    score_diff = map_diff = 0.0
    for img in images:
        onnx_score, onnx_map = sess.run(None, {"image": img})
        with torch.no_grad():
            score, amap = model(preprocess(img, image_size))
            amap = onnx_resize(amap, img.shape[:2], antialias=False)[0, 0]
        score_diff = max(score_diff, float(np.abs(onnx_score - score.numpy()).max()))
        map_diff = max(map_diff, float(np.abs(onnx_map - amap.numpy()).max()))
    return score_diff, map_diff


def export_unified(model: UnifiedModel, center: float, threshold: float, out_dir: Path, metadata: dict,
                   parity_images: list[Path], preprocess: TorchPreprocess = preprocess_torch) -> dict:
    """Write model.onnx and model.json (atomically) after the raw-image parity check (`raw_parity`, torch side
    preprocessed by `preprocess`); returns the metadata. ParityError, and nothing written, above the tolerances."""
    size = model.cfg.image_size
    wrapped = NormalisedUnified(model.eval(), center, threshold).eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (torch.rand(1, 3, size, size) * 255,), dynamo=True,
                                    input_names=[CORE_INPUT], output_names=list(CORE_OUTPUTS), opset_version=18,
                                    external_data=False, verbose=False)
    data = compose_anomaly_model(program.model_proto, size, RESIZE).SerializeToString()
    # A non-square image too when none is given: a stretch that differs only off the diagonal shows there.
    images = [read_image(p) for p in parity_images] or [
        np.random.default_rng(0).integers(0, 255, (size + 37, 2 * size + 11, 3), dtype=np.uint8)]
    score_diff, map_diff = raw_parity(wrapped, data, size, images, preprocess)
    if score_diff > PARITY_TOLERANCE or map_diff > MAP_PARITY_TOLERANCE:
        raise ParityError(f"exported ONNX disagrees with the torch model on raw images: max score difference "
                          f"{score_diff:.2e} (tolerance {PARITY_TOLERANCE:.0e}), max map difference {map_diff:.2e} "
                          f"(tolerance {MAP_PARITY_TOLERANCE:.0e}); model not written to {out_dir}")
    meta = {**metadata, "threshold": 0.5, "input_size": size, "resize": RESIZE,
            "normalisation": {"center_raw": center, "threshold_raw": threshold},
            "export": {"opset": 18, "parity_inputs": "raw uint8 images, each side preprocessing its own way",
                       "parity_max_abs_score_diff": score_diff, "parity_max_abs_map_diff": map_diff,
                       "parity_tolerance": {"score": PARITY_TOLERANCE, "map": MAP_PARITY_TOLERANCE},
                       "parity_images": [str(p) for p in parity_images]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / MODEL_FILE, data)
    atomic_write(out_dir / METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta
