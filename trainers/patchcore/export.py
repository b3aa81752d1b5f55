"""Export the memory-bank model as one ONNX graph with pre/post-processing, plus its metadata, parity-checked."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from engine.datasets.imageio import read_image
from engine.runtime.model_format import MODEL_FILE
from engine.runtime.model_format import MODEL_METADATA_FILE as METADATA_FILE
from trainers.common.io import atomic_write
from trainers.common.onnx_graph import CORE_INPUT, CORE_OUTPUTS, compose_anomaly_model
from trainers.common.torch_preprocess import preprocess_torch
from trainers.patchcore.model import PatchCoreModel, PatchFeatures

STATE_FILE = "torch_state.pt"  # bank and calibration, to rebuild the torch model (re-export, fine-tuning)
PARITY_TOLERANCE = 1e-4


def export_core(model: PatchCoreModel, image_size: int) -> onnx.ModelProto:
    """torch -> ONNX for the core, with dynamic height and width (aspect-preserving inputs vary in shape)."""
    h = torch.export.Dim("h", min=32, max=8 * image_size)
    w = torch.export.Dim("w", min=32, max=8 * image_size)
    example = torch.rand(1, 3, image_size, image_size) * 255
    # The exporter warns about torchvision ops it cannot register; none are used here, and users need not see it.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[CORE_INPUT],
            output_names=list(CORE_OUTPUTS),
            dynamic_shapes={"x": {2: h, 3: w}},
            opset_version=18,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def parity(
    model: PatchCoreModel, onnx_bytes: bytes, image_size: int, images: list[np.ndarray], policy: str
) -> float:
    """Max |score_torch - score_onnx| / max(1, |score_onnx|) over `images`: absolute in the normalised units where
    scores live (0 good, 0.5 threshold), relative far above them, where float32 cannot hold 1e-4 absolute (a model
    calibrated on a handful of images scores a defect in the tens of thousands).

    Each side gets the same RAW uint8 image and does its own preprocessing (torch through
    trainers.common.torch_preprocess, ONNX inside the graph), so a resize or normalisation that differs between
    training and the exported graph shows up here instead of in the field.
    """
    full = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for img in images:
        onnx_score = full.run(None, {"image": img})[0]
        with torch.inference_mode():
            torch_score = model(preprocess_torch(img, image_size, policy))[0].numpy()
        scale = np.maximum(1.0, np.abs(onnx_score))
        worst = max(worst, float((np.abs(onnx_score - torch_score) / scale).max()))
    return worst


def export_model(
    model: PatchCoreModel,
    out_dir: Path,
    metadata: dict,
    image_size: int,
    parity_images: list[Path],
    policy: str = "area",
) -> Path:
    """Write model.onnx and model.json into out_dir atomically (a crash never leaves a half-written model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    full = compose_anomaly_model(export_core(model, image_size), image_size, policy)
    data = full.SerializeToString()
    images = [read_image(p) for p in parity_images]
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)]
    diff = parity(model, data, image_size, images, policy)
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"exported ONNX disagrees with the torch model: max score difference {diff:.2e}")
    meta = dict(metadata)
    meta["export"] = {"opset": 18, "parity_max_abs_score_diff": diff, "parity_images": [str(p) for p in parity_images]}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("features.")}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(out_dir / STATE_FILE, buffer.getvalue())
    atomic_write(out_dir / MODEL_FILE, data)
    atomic_write(out_dir / METADATA_FILE, json.dumps(meta, indent=2).encode())
    return out_dir


def load_torch_model(run_dir: str | Path) -> PatchCoreModel:
    """Rebuild the torch model of a run directory (backbone from the pip weights, the rest from STATE_FILE)."""
    run = Path(run_dir)
    meta = json.loads((run / METADATA_FILE).read_text())
    state = torch.load(run / STATE_FILE, map_location="cpu", weights_only=True)
    factors = tuple(meta["scales"])
    banks = [state[f"branches.{i}.bank"] for i in range(len(factors))]
    grid = state["branches.0.pos_mean"].shape[-1]
    features = PatchFeatures(meta["backbone"], tuple(meta["stages"]))
    model = PatchCoreModel(features, banks, factors, position_grid=grid)
    model.load_state_dict({**model.state_dict(), **state})
    return model.eval()
