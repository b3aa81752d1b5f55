"""The pure memory-bank model (PatchCore family), apart from its training loop.

Input: one image already resized to the model grid (1 x 3 x h x w, pixel values 0..255, h and w multiples of 64).
Output: the normalised image score (shape [1]) and the normalised, blurred anomaly map (1 x 1 x h x w).
Everything here is exported to ONNX, so the torch path and every runtime compute the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteFeatures


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class PatchFeatures(nn.Module):
    """Locally aware patch features: two backbone stages, 3x3 neighbourhood average, deeper stage upsampled."""

    def __init__(self, backbone: str = "efficientnet-lite0", stages: tuple[int, int] = (2, 4)) -> None:
        super().__init__()
        self.backbone = EfficientNetLiteFeatures(backbone, stages)
        self.dim = sum(self.backbone.channels)
        self.stride = self.backbone.strides[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: N x 3 x h x w in 0..255 -> N x D x h/stride x w/stride."""
        feats = self.backbone((x - PIXEL_MEAN) / PIXEL_STD)
        # count_include_pad=False keeps border patches on the same scale as interior ones.
        pooled = [F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False) for f in feats]
        size = pooled[0].shape[-2:]
        up = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        return torch.cat(up, dim=1)


def min_width(center: float) -> float:
    """The smallest threshold - center a normalisation may use. With one held-out image (a tiny training set) the
    threshold equals the center; the old fixed 1e-6 gap is below float32's resolution at centers of a few units, so
    one rounding step of the ONNX graph moved a good part's score from 0 to 0.59 and the export's parity check
    refused the model. Both normalisations work in units where good parts spread by about 1 (position z-scores,
    then threshold = 1), so 1e-3 (or 1e-3 of a large center) keeps the gap thousands of float32 steps wide and far
    below any real spread of good scores."""
    return max(1e-3, 1e-3 * abs(center))


class ScaleBranch(nn.Module):
    """One scale of the model: its memory bank, per-position statistics and score calibration.

    The branch sees the input box-downsampled by `factor`. Its map is blurred at its own resolution, then:
    1. standardised per position by the mean and spread held-out good images show there (a coarse grid over
       normalised coordinates), so edges or fixtures that are always a little unusual stop raising every good
       part's score; defaults are the identity;
    2. put on a common scale: 0 = median held-out good score, 1 = this branch's own threshold.
    """

    def __init__(self, bank: torch.Tensor, factor: int, blur_sigma: float, position_grid: int) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("bank", bank.float().contiguous())
        self.register_buffer("bank_sqnorm", (bank.float() ** 2).sum(1))
        kernel = gaussian_kernel1d(blur_sigma)
        self.register_buffer("blur_x", kernel.view(1, 1, 1, -1))
        self.register_buffer("blur_y", kernel.view(1, 1, -1, 1))
        self.register_buffer("pos_mean", torch.zeros(1, 1, position_grid, position_grid))
        self.register_buffer("pos_std", torch.ones(1, 1, position_grid, position_grid))
        self.register_buffer("norm", torch.tensor([0.0, 1.0]))

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.factor == 1 else F.avg_pool2d(x, self.factor)

    def patch_distances(self, f: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Nearest-bank distance per patch of a feature map f (1 x D x h' x w') -> 1 x 1 x h' x w'.

        exclude: optional bool mask over bank rows to ignore (leave-one-image-out scoring of training images).
        """
        _, d, h, w = f.shape
        p = f.reshape(d, h * w).transpose(0, 1)
        d2 = (p * p).sum(1, keepdim=True) - 2.0 * (p @ self.bank.transpose(0, 1)) + self.bank_sqnorm[None, :]
        if exclude is not None:
            d2 = d2.masked_fill(exclude[None, :], float("inf"))
        dist = torch.sqrt(torch.clamp(d2.min(dim=1).values, min=0.0))
        return dist.reshape(1, 1, h, w)

    def smooth(self, dist: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
        """Patch distances -> map at the branch input's size, Gaussian-blurred."""
        m = F.interpolate(dist, size=size, mode="bilinear", align_corners=False)
        rx = self.blur_x.shape[-1] // 2
        ry = self.blur_y.shape[-2] // 2
        m = F.conv2d(F.pad(m, (rx, rx, 0, 0), mode="replicate"), self.blur_x)
        return F.conv2d(F.pad(m, (0, 0, ry, ry), mode="replicate"), self.blur_y)

    def standardise(self, dist: torch.Tensor) -> torch.Tensor:
        size = dist.shape[-2:]
        mean = F.interpolate(self.pos_mean, size=size, mode="bilinear", align_corners=False)
        std = F.interpolate(self.pos_std, size=size, mode="bilinear", align_corners=False)
        return (dist - mean) / std

    def calibrated(self, standardised: torch.Tensor) -> torch.Tensor:
        return (standardised - self.norm[0]) / (self.norm[1] - self.norm[0])

    def set_position_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.pos_mean.copy_(mean.reshape(self.pos_mean.shape))
        self.pos_std.copy_(std.reshape(self.pos_std.shape))

    def set_calibration(self, center: float, threshold: float) -> None:
        self.norm.copy_(torch.tensor([center, max(threshold, center + min_width(center))]))


class PatchCoreModel(nn.Module):
    """Memory-bank model over one or more scales sharing one backbone.

    Each branch scores the image at its scale (see ScaleBranch); the fused map is the mean of the branches'
    calibrated maps at the input's resolution and the fused raw score the mean of their maxima. A final affine
    normalisation maps 0 to the median held-out good score and 0.5 to the decision threshold, for the score and
    the map alike (a map value above 0.5 means "above the image threshold"). Fine scales localise small defects;
    coarse ones see defects that span large areas (uneven grinding on magnetic tiles).
    """

    def __init__(
        self,
        features: PatchFeatures,
        banks: list[torch.Tensor],
        factors: tuple[int, ...] = (1,),
        blur_sigma: float = 4.0,
        position_grid: int = 32,
    ) -> None:
        super().__init__()
        if len(banks) != len(factors):
            raise ValueError("one bank per scale factor")
        self.features = features
        self.branches = nn.ModuleList(
            ScaleBranch(b, f, blur_sigma, position_grid) for b, f in zip(banks, factors, strict=True)
        )
        self.register_buffer("norm", torch.tensor([0.0, 1.0]))

    def set_normalisation(self, center: float, threshold: float) -> None:
        self.norm.copy_(torch.tensor([center, max(threshold, center + min_width(center))]))

    def branch_map(self, branch: ScaleBranch, x: torch.Tensor) -> torch.Tensor:
        """Blurred distance map of one branch at that branch's resolution, before normalisation."""
        xs = branch.downsample(x)
        return branch.smooth(branch.patch_distances(self.features(xs)), xs.shape[-2:])

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused raw score [1], fused raw map 1 x 1 x h x w) before the final normalisation."""
        size = x.shape[-2:]
        scores, maps = [], []
        for branch in self.branches:
            m = branch.calibrated(branch.standardise(self.branch_map(branch, x)))
            scores.append(m.amax(dim=(1, 2, 3)))
            if branch.factor != 1:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            maps.append(m)
        n = float(len(self.branches))
        return torch.stack(scores).sum(0) / n, torch.stack(maps).sum(0) / n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, m = self.raw(x)
        scale = 2.0 * (self.norm[1] - self.norm[0])
        return (score - self.norm[0]) / scale, (m - self.norm[0]) / scale
