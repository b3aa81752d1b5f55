"""Convert a SAM / MobileSAM checkpoint into a segmenter folder (engine.runtime.segmenter_format).

Everything is written into a staging folder beside `out` and checked there; only a conversion that passes the
torch-vs-ONNX parity check is moved into `out`, segmenter.json last, so a folder with segmenter.json is complete.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from engine.checksums import sha256_file
from engine.errors import DefectScopeError, ModelError
from engine.runtime import segmenter_format as fmt
from trainers.common.onnx_graph import IR_VERSION, OPSET
from trainers.sam.checkpoint import PIXEL_MEAN, PIXEL_STD, load_sam
from trainers.sam.export import (
    EXTERNAL_DATA_LIMIT,
    check_parity,
    export_decoder,
    export_encoder,
    parity_failures,
)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ConversionResult:
    out: Path
    metadata: dict[str, Any]


def convert_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    family: str = "auto",
    progress: Progress | None = None,
    *,
    input_size: int | None = None,
    external_data_limit: int = EXTERNAL_DATA_LIMIT,
) -> ConversionResult:
    """checkpoint (.pth/.pt state dict) -> out/{encoder.onnx, decoder.onnx, segmenter.json}.

    family: "auto" or one of sam_vit_b / sam_vit_l / sam_vit_h / mobile_sam_vit_t (checked against the tensors).
    input_size: MobileSAM only, default 1024 (SAM ViT checkpoints fix theirs in the position embedding).
    external_data_limit: encoders with more weight bytes keep them in encoder.onnx.data (tests lower it).
    """
    report = progress or (lambda _f, _m: None)
    checkpoint, out = Path(checkpoint), Path(out)
    report(0.0, f"reading {checkpoint.name}")
    sam, arch = load_sam(checkpoint, family, input_size)
    if 1 + arch.decoder.num_multimask_outputs != fmt.NUM_MASK_OUTPUTS:
        raise DefectScopeError(
            f"{checkpoint}: mask decoder has {arch.decoder.num_multimask_outputs} multimask outputs; the segmenter "
            f"format needs {fmt.NUM_MASK_OUTPUTS - 1}"
        )
    n_params = sum(p.numel() for p in sam.parameters())
    report(0.1, f"loaded {arch.family} ({n_params / 1e6:.1f} M parameters, input {arch.input_size} px)")
    report(0.12, "checksumming the checkpoint")
    source_sha = sha256_file(checkpoint)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        report(0.15, "exporting the image encoder to ONNX")
        data_name = export_encoder(sam.image_encoder, arch, stage / fmt.ENCODER_FILE, external_data_limit)
        report(0.5, "exporting the prompt decoder to ONNX")
        export_decoder(sam, arch, stage / fmt.DECODER_FILE)
        report(0.65, "checking ONNX Runtime against torch")
        parity = check_parity(sam, arch, stage / fmt.ENCODER_FILE, stage / fmt.DECODER_FILE)
        problems = parity_failures(parity)
        if problems:
            raise ModelError(f"{checkpoint}: the exported {arch.family} model disagrees with torch: "
                             + "; ".join(problems))
        meta = {
            "format": fmt.FORMAT,
            "family": arch.family,
            "input_size": arch.input_size,
            "embedding_shape": list(arch.embedding_shape),
            "pixel_mean": list(PIXEL_MEAN),
            "pixel_std": list(PIXEL_STD),
            "num_mask_outputs": fmt.NUM_MASK_OUTPUTS,
            "source": checkpoint.name,
            "source_path": str(checkpoint.resolve()),
            "source_sha256": source_sha,
            "source_bytes": checkpoint.stat().st_size,
            "parameters": n_params,
            "architecture": arch.describe(),
            "parity": parity,
            "export": {
                "opset": OPSET,
                "ir_version": IR_VERSION,
                "encoder_external_data": data_name,
                "preprocessing": "resize longest side to input_size (bilinear, antialiased), normalise with "
                                 "pixel_mean/pixel_std, zero-pad bottom/right to input_size x input_size",
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
            },
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (stage / fmt.METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        report(0.95, f"writing {out}")
        _publish(stage, out, data_name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report(1.0, f"{arch.family} segmenter written to {out}")
    return ConversionResult(out, meta)


def _publish(stage: Path, out: Path, data_name: str | None) -> None:
    """Move the staged files into `out`: metadata removed first and written last, so a reader never takes a
    half-replaced folder for a complete one."""
    out.mkdir(parents=True, exist_ok=True)
    (out / fmt.METADATA_FILE).unlink(missing_ok=True)
    stale_data = out / f"{fmt.ENCODER_FILE}.data"
    if data_name is None:
        stale_data.unlink(missing_ok=True)  # left by an earlier conversion of a larger model
    names = [n for n in (data_name, fmt.ENCODER_FILE, fmt.DECODER_FILE, fmt.METADATA_FILE) if n]
    for name in names:
        os.replace(stage / name, out / name)
