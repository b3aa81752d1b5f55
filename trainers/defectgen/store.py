"""The generator folder: both models' torch state and generator.json (config, classes, training figures).

    <out>/generator.json   {"format": FORMAT, "config": GeneratorConfig, "classes": [...], "channels": [...],
                            "training": {...}}
    <out>/large.pt, <out>/small.pt   state dicts (loaded with weights_only=True: no pickled code runs)
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from engine.errors import DefectScopeError
from trainers.common.io import atomic_write
from trainers.defectgen.config import GeneratorConfig
from trainers.defectgen.model import build_models

# /2: both models conditioned on the defect type, trained on defect windows (/1 generated whole images)
FORMAT = "defectscope-defectgen/2"
META_FILE = "generator.json"
LARGE_FILE = "large.pt"
SMALL_FILE = "small.pt"


def _state_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def save_generator(out: str | Path, large: torch.nn.Module, small: torch.nn.Module, cfg: GeneratorConfig,
                   classes: list[str], training: dict[str, Any]) -> dict[str, Any]:
    """Write the folder (the json last, so a folder with one is complete); returns the metadata."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / LARGE_FILE, _state_bytes(large))
    atomic_write(root / SMALL_FILE, _state_bytes(small))
    meta = {"format": FORMAT, "config": cfg.to_dict(), "classes": list(classes),
            "channels": ["R", "G", "B", "background", *classes], "training": training}
    atomic_write(root / META_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    return meta


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """generator.json of a generator folder, checked for its format."""
    root = Path(folder)
    try:
        meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DefectScopeError(f"{root}: not a Defect-Gen generator folder ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DefectScopeError(f"{root / META_FILE}: format {FORMAT} expected")
    return meta


def load_generator(folder: str | Path, device: torch.device | None = None
                   ) -> tuple[torch.nn.Module, torch.nn.Module, GeneratorConfig, dict[str, Any]]:
    """(large, small, config, metadata) of a generator folder, in eval mode."""
    root = Path(folder)
    meta = read_metadata(root)
    cfg = GeneratorConfig.from_dict(meta["config"])
    large, small = build_models(cfg, len(meta["classes"]))
    device = device or torch.device("cpu")
    for model, name in ((large, LARGE_FILE), (small, SMALL_FILE)):
        model.load_state_dict(torch.load(root / name, map_location="cpu", weights_only=True))
        model.to(device).eval()
    return large, small, cfg, meta
