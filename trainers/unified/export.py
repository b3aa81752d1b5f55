"""Export a unified model as model.onnx + model.json: the memory-bank model's format, so the GUI, the CLI and the
engine run it unchanged (engine.runtime.AnomalyModel, score_dataset, the viewer).

The graph takes the original H x W x 3 uint8 image: resized inside to image_size x image_size ("stretch": the
learned queries are one per grid position, so the grid is fixed), reconstruction error map, blur, pooled-max score,
then the same normalisation as the memory-bank model (0 = a typical good part, 0.5 = the decision threshold),
and the map resized back to the original size.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from engine.datasets.imageio import read_image
from trainers.common.onnx_graph import CORE_INPUT, CORE_OUTPUTS, compose_anomaly_model, preprocess_model
from trainers.patchcore.export import METADATA_FILE, MODEL_FILE, PARITY_TOLERANCE, atomic_write
from trainers.unified.model import UnifiedModel


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


def export_unified(model: UnifiedModel, center: float, threshold: float, out_dir: Path, metadata: dict,
                   parity_images: list[Path]) -> dict:
    """Write model.onnx and model.json (atomically), after a torch-vs-ONNX parity check; returns the metadata."""
    size = model.cfg.image_size
    wrapped = NormalisedUnified(model.eval(), center, threshold).eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapped, (torch.rand(1, 3, size, size) * 255,), dynamo=True,
                                    input_names=[CORE_INPUT], output_names=list(CORE_OUTPUTS), opset_version=18,
                                    external_data=False, verbose=False)
    full = compose_anomaly_model(program.model_proto, size, "stretch")
    data = full.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    pre = ort.InferenceSession(preprocess_model(size, "stretch").SerializeToString(),
                               providers=["CPUExecutionProvider"])
    images = [read_image(p) for p in parity_images] or [
        np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)]
    diff = 0.0
    for img in images:
        onnx_score = sess.run(None, {"image": img})[0]
        with torch.no_grad():
            torch_score = wrapped(torch.from_numpy(pre.run(None, {"image": img})[0]))[0].numpy()
        diff = max(diff, float(np.abs(onnx_score - torch_score).max()))
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"exported ONNX disagrees with the torch model: max score difference {diff:.2e}")
    meta = {**metadata, "threshold": 0.5, "input_size": size, "resize": "stretch",
            "normalisation": {"center_raw": center, "threshold_raw": threshold},
            "export": {"opset": 18, "parity_max_abs_score_diff": diff,
                       "parity_images": [str(p) for p in parity_images]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / MODEL_FILE, data)
    atomic_write(out_dir / METADATA_FILE, json.dumps(meta, indent=2).encode())
    return meta
