"""SAM's prompt encoder, mask decoder and ONNX wrapper, imported without segment_anything's package __init__.

`import segment_anything` runs its __init__, which imports the automatic mask generator and with it torchvision,
and torchvision cannot be imported against the CPU torch build we use. The modelling classes and
`utils.onnx.SamOnnxModel` need nothing from torchvision, so we register a bare package module for
"segment_anything" (its __path__ set to the installed folder) and import only those submodules.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from engine.errors import DefectScopeError

_PACKAGE = "segment_anything"


def _ensure_bare_package() -> None:
    existing = sys.modules.get(_PACKAGE)
    if existing is not None and getattr(existing, "__path__", None):
        return  # already imported (for real or as a bare package): submodules resolve through its __path__
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DefectScopeError(
            "the 'segment-anything' package is not installed; it is part of the 'train' extra "
            "(pip install segment-anything==1.0)")
    bare = types.ModuleType(_PACKAGE)
    bare.__path__ = list(spec.submodule_search_locations)
    bare.__file__ = spec.origin
    bare.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = bare


def modeling() -> Any:
    """The `segment_anything.modeling` module (Sam, PromptEncoder, MaskDecoder, TwoWayTransformer, LayerNorm2d)."""
    _ensure_bare_package()
    return importlib.import_module(f"{_PACKAGE}.modeling")


def sam_onnx_model_class() -> type:
    """`segment_anything.utils.onnx.SamOnnxModel`, the decoder wrapper whose interface the format fixes."""
    _ensure_bare_package()
    # utils/__init__.py is empty; utils/onnx.py imports only torch, ..modeling and .amg (numpy + torch).
    return importlib.import_module(f"{_PACKAGE}.utils.onnx").SamOnnxModel
