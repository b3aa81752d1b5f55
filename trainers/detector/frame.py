"""The model frame in torch: the exported graph's pre-processing, written again from the raw uint8 image.

The graph (trainers.promptseg.export's longest-side pre-processing, reused by the detector export) resizes the
longest side to `size` with ONNX's antialiased linear Resize, normalises with the Lite ImageNet constants and pads
bottom/right to size x size. Training builds its cache with this function and the parity check feeds it the same
raw image as ONNX Runtime, so both sides resize exactly as inspection does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD
from trainers.common.torch_preprocess import resize_weights


def content_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) of the resized image inside the frame, rounded as the graph does (float32, floor(x + 0.5))."""
    scale = np.float32(size) / np.float32(max(h, w))
    hw = np.floor(np.array([h, w], np.float32) * scale + np.float32(0.5))
    return int(max(hw[0], 1)), int(max(hw[1], 1))


def frame_scale(h: int, w: int, size: int) -> tuple[float, float]:
    """(sx, sy): model-frame pixels -> original pixels, as the graph computes it (original / resized, float32)."""
    ch, cw = content_shape(h, w, size)
    return float(np.float32(w) / np.float32(cw)), float(np.float32(h) / np.float32(ch))


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int) -> torch.Tensor:
    # Building the matrix is a Python loop per output pixel; training resizes thousands of same-sized views.
    return torch.from_numpy(resize_weights(n_in, n_out))


def to_frame(image: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x size x size float32: resized, normalised, zero-padded (the graph's output).

    The resize is trainers.common.torch_preprocess.onnx_resize's (ONNX's antialiased linear rule as one matrix
    per axis), with the matrices kept per size pair.
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
    h, w = content_shape(image.shape[0], image.shape[1], size)
    resized = (_weights(image.shape[0], h) @ x @ _weights(image.shape[1], w).T).float()
    out = torch.zeros((1, 3, size, size), dtype=torch.float32)
    out[..., :h, :w] = (resized - PIXEL_MEAN) / PIXEL_STD
    return out
