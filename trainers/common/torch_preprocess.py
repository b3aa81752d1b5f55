"""The exported graphs' preprocessing (trainers.common.onnx_graph), written again in torch from the raw image.

Why not `F.interpolate(..., antialias=True)`: ONNX's antialiased linear Resize pads the image edge by replicating
border pixels, while torch (and PIL) renormalise the filter over the pixels inside the image; on a 256 -> 64
downscale the border rows and columns then differ by up to ~14 grey levels (measured on ONNX Runtime 1.31 /
torch 2.13). This module builds the ONNX rule (onnx.reference's Resize: half_pixel coordinates, triangle filter
stretched by 1 / scale when downscaling, edge padding) as one weight matrix per axis, so a parity check can feed
torch and ONNX Runtime the same raw uint8 image, each doing its own preprocessing, and still agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainers.common.onnx_graph import RESIZE_POLICIES, SIDE_MULTIPLE, check_image_size


def resize_weights(n_in: int, n_out: int, antialias: bool = True) -> np.ndarray:
    """n_out x n_in weights of ONNX Resize (mode linear, half_pixel) along one axis."""
    scale = n_out / n_in
    filter_scale = min(scale, 1.0) if antialias else 1.0
    start = math.floor(-1 / filter_scale) + 1
    offsets = np.arange(start, 2 - start)  # footprint 2 - 2 * start taps
    w = np.zeros((n_out, n_in), np.float64)
    for x in range(n_out):
        src = (x + 0.5) / scale - 0.5
        base = math.floor(src)
        if src == base:  # an exact source pixel: ONNX takes it as the right-hand neighbour (ratio 1)
            base -= 1
        coeffs = np.clip(1 - np.abs((offsets - (src - base)) * filter_scale), 0, 1)
        coeffs /= coeffs.sum()
        np.add.at(w[x], np.clip(base + offsets, 0, n_in - 1), coeffs)  # edge padding: clamp the index
    return w


def onnx_resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """N x C x H x W -> N x C x size[0] x size[1], as ONNX Runtime's linear Resize computes it."""
    h, w = x.shape[-2:]
    wh = torch.from_numpy(resize_weights(h, size[0], antialias)).to(x)
    ww = torch.from_numpy(resize_weights(w, size[1], antialias)).to(x)
    return wh @ x @ ww.T


def resized_shape(h: int, w: int, image_size: int, policy: str = "area") -> tuple[int, int]:
    """The (height, width) the graph resizes an h x w image to (see onnx_graph._pre_nodes)."""
    check_image_size(image_size)
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy '{policy}'; known: {', '.join(RESIZE_POLICIES)}")
    if policy == "stretch":
        return image_size, image_size
    scale = np.float32(image_size) / np.sqrt(np.float32(h) * np.float32(w))
    units = np.round(np.array([h, w], np.float32) * scale / np.float32(SIDE_MULTIPLE))  # half to even, as ONNX
    hh, ww = (SIDE_MULTIPLE * np.maximum(units, 1)).astype(int)
    return int(hh), int(ww)


def preprocess_torch(image: np.ndarray, image_size: int, policy: str = "stretch") -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x h x w float (0..255), what the exported graph's preprocessing yields."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
    out = onnx_resize(x, resized_shape(image.shape[0], image.shape[1], image_size, policy))
    return out.float()
