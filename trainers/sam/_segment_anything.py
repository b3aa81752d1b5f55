"""segment_anything's modelling classes and ONNX wrapper, imported WITHOUT running its package __init__.

Why: `segment_anything/__init__.py` imports the automatic mask generator, which imports torchvision, and torchvision
cannot be imported against the CPU torch build we use ("operator torchvision::nms does not exist", see
shared/docs/environment.md). `segment_anything.modeling` and `segment_anything.utils.onnx` need nothing from
torchvision, so we register a bare package module for "segment_anything" whose __path__ is the installed folder;
Python then imports those submodules normally while the real __init__ never runs.

`segment_anything.build_sam` only imports torch and .modeling, but trainers.sam.checkpoint builds the models itself
(the architecture is read from the checkpoint), so it is not needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_PACKAGE = "segment_anything"


def _ensure_package() -> None:
    existing = sys.modules.get(_PACKAGE)
    if existing is not None and getattr(existing, "__path__", None):
        return  # imported already, for real (where torchvision works) or bare: submodules resolve either way
    spec = importlib.util.find_spec(_PACKAGE)  # finds the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        # ImportError, so the job registry reports "needs the 'train' extra" (segment-anything is part of it).
        raise ImportError("the 'segment-anything' package is not installed (pip install segment-anything==1.0)")
    bare = types.ModuleType(_PACKAGE)
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__file__ = spec.origin
    bare.__package__ = _PACKAGE
    bare.__spec__ = spec  # importlib.util.find_spec("segment_anything") must keep working for everyone else
    sys.modules[_PACKAGE] = bare


_ensure_package()
_modeling = importlib.import_module(f"{_PACKAGE}.modeling")
_common = importlib.import_module(f"{_PACKAGE}.modeling.common")
_onnx = importlib.import_module(f"{_PACKAGE}.utils.onnx")

Sam = _modeling.Sam
ImageEncoderViT = _modeling.ImageEncoderViT
PromptEncoder = _modeling.PromptEncoder
MaskDecoder = _modeling.MaskDecoder
TwoWayTransformer = _modeling.TwoWayTransformer
LayerNorm2d = _common.LayerNorm2d
SamOnnxModel = _onnx.SamOnnxModel

__all__ = [
    "ImageEncoderViT", "LayerNorm2d", "MaskDecoder", "PromptEncoder", "Sam", "SamOnnxModel", "TwoWayTransformer",
]
