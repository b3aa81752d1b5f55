"""How good are synthetic defects? Three measures, each comparable between synthesis methods and against the real
defects they imitate.

- Mask alignment: a mask is aligned when the image differs from its surroundings inside the mask much more than
  inside the same mask moved beside it (grey level and local texture, each relative to the ring around it). The
  share of aligned samples is compared with the share for real defects with their hand-drawn masks: a synthetic set
  whose masks were shifted, or painted independently of the image, fails.
- Diversity: the mean pairwise distance of defect-window features (pretrained EfficientNet-Lite0, global average
  of the last stage), synthetic vs real. Cut-paste of five donors repeats them; a generator should not.
- Realism: precision and recall in that feature space (Kynkäänniemi et al. 2019, k-nearest-neighbour balls):
  precision = share of synthetic windows inside some real window's ball, recall = share of real windows inside
  some synthetic window's ball.

Features are taken on a square window around each defect (its mask's box with context), so a large good part
around a small defect does not make every sample look the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import torch
from scipy.ndimage import binary_dilation, uniform_filter
from scipy.spatial.distance import pdist
from sklearn.neighbors import NearestNeighbors

from trainers.common.efficientnet_lite import PIXEL_MEAN, PIXEL_STD, EfficientNetLiteFeatures

WINDOW = 128  # px: the side defect windows are resized to for the backbone
CONTEXT = 2.0  # window side = mask box side x this
ALIGNED_RATIO = 2.0  # contrast inside the mask / beside it from which a mask counts as aligned (real masks: 2-50)
REAL_SHARE_FRACTION = 0.8  # the alignment check passes when synthetic share >= this x the real share
NN_K = 3


# ------------------------------------------------------------------------------------------------ alignment
def _contrast(maps: Sequence[np.ndarray], mask: np.ndarray, ring: np.ndarray) -> float:
    """Largest |mean inside - mean of ring| / (sd of ring + 1) over the maps."""
    if not mask.any() or not ring.any():
        return 0.0
    return max(abs(float(m[mask].mean()) - float(m[ring].mean())) / (float(m[ring].std()) + 1.0) for m in maps)


def _moved(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`mask` moved by (dy, dx), what leaves the image dropped."""
    H, W = mask.shape
    out = np.zeros_like(mask)
    if abs(dy) >= H or abs(dx) >= W:
        return out
    out[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = mask[max(-dy, 0):H + min(-dy, 0),
                                                                      max(-dx, 0):W + min(-dx, 0)]
    return out


def alignment_ratio(image: np.ndarray, mask: np.ndarray) -> float:
    """Contrast of the image inside `mask` over the mean contrast of the mask moved beside itself (four
    directions). A mask painted where nothing differs, or drawn off its defect, scores about 1 or below."""
    grey = image.astype(np.float64).mean(-1) if image.ndim == 3 else image.astype(np.float64)
    local_sd = np.sqrt(np.maximum(uniform_filter(grey ** 2, 5) - uniform_filter(grey, 5) ** 2, 0))
    maps = (grey, local_sd)
    mask = mask.astype(bool)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0.0
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    width = max(3, round(0.25 * np.sqrt(ys.size)))

    def contrast(m: np.ndarray) -> float:
        return _contrast(maps, m, binary_dilation(m, iterations=width) & ~m)

    shifted = []
    for dy, dx in ((h + width, 0), (-(h + width), 0), (0, w + width), (0, -(w + width))):
        moved = _moved(mask, dy, dx)
        if moved.sum() >= 0.5 * mask.sum():  # a move that pushes most of the mask off the image says nothing
            shifted.append(contrast(moved))
    if not shifted:
        return float("nan")
    return contrast(mask) / (float(np.mean(shifted)) + 1e-6)


def aligned_share(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, int]:
    """(share of (image, mask) pairs whose alignment ratio is at least ALIGNED_RATIO, pairs measured)."""
    ratios = [r for r in (alignment_ratio(i, m) for i, m in pairs) if np.isfinite(r)]
    return (float(np.mean([r >= ALIGNED_RATIO for r in ratios])) if ratios else 0.0), len(ratios)


def alignment_check(synthetic_share: float, real_share: float) -> bool:
    """Whether synthetic masks are about as aligned with their images as real masks are with theirs."""
    return synthetic_share >= REAL_SHARE_FRACTION * real_share


# ------------------------------------------------------------------------------------------------- features
def defect_window(image: np.ndarray, mask: np.ndarray, size: int = WINDOW) -> np.ndarray:
    """The square window around the mask's box (side = box side x CONTEXT, inside the image), resized."""
    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    side = int(min(max(np.ptp(ys) + 1, np.ptp(xs) + 1) * CONTEXT, H, W)) if ys.size else min(H, W)
    side = max(side, 8)
    cy, cx = (ys.mean(), xs.mean()) if ys.size else (H / 2, W / 2)
    y0 = int(np.clip(round(cy - side / 2), 0, H - side))
    x0 = int(np.clip(round(cx - side / 2), 0, W - side))
    crop = image[y0:y0 + side, x0:x0 + side]
    if crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, 2)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


class WindowFeatures:
    """Pretrained EfficientNet-Lite0 features of defect windows: the last stage's global average, L2-normalised
    (so distances do not depend on the image's overall contrast)."""

    def __init__(self, backbone: str = "efficientnet-lite0") -> None:
        self.net = EfficientNetLiteFeatures(backbone, stages=(4,)).eval()

    @torch.no_grad()
    def __call__(self, windows: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(windows), batch_size):
            x = torch.from_numpy(np.stack(windows[start:start + batch_size])).permute(0, 3, 1, 2).float()
            f = self.net((x - PIXEL_MEAN) / PIXEL_STD)[-1].mean(dim=(2, 3))
            out.append(torch.nn.functional.normalize(f, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def diversity(features: np.ndarray) -> float:
    """Mean pairwise Euclidean distance."""
    return float(pdist(features).mean()) if len(features) > 1 else 0.0


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = NN_K) -> tuple[float, float]:
    """Improved precision and recall (k-NN balls around each set's points)."""
    def inside(ref: np.ndarray, query: np.ndarray) -> float:
        kk = min(k, len(ref) - 1)
        if kk < 1:
            return 0.0
        radii = NearestNeighbors(n_neighbors=kk + 1).fit(ref).kneighbors(ref)[0][:, -1]
        d = np.linalg.norm(query[:, None, :] - ref[None, :, :], axis=-1)
        return float((d <= radii[None, :]).any(axis=1).mean())

    return inside(real, fake), inside(fake, real)


def quality_report(real: Sequence[tuple[np.ndarray, np.ndarray]], synthetic: Sequence[tuple[np.ndarray, np.ndarray]],
                   features: WindowFeatures | None = None) -> dict[str, float | int | bool]:
    """All three measures for (image, bool mask) pairs of real defects and of synthetic ones."""
    features = features or WindowFeatures()
    real_share, n_real = aligned_share(real)
    syn_share, n_syn = aligned_share(synthetic)
    fr = features([defect_window(i, m) for i, m in real])
    fs = features([defect_window(i, m) for i, m in synthetic])
    precision, recall = precision_recall(fr, fs)
    return {"n_real": n_real, "n_synthetic": n_syn, "aligned_share_real": round(real_share, 3),
            "aligned_share_synthetic": round(syn_share, 3),
            "alignment_check_passed": alignment_check(syn_share, real_share),
            "diversity_real": round(diversity(fr), 4), "diversity_synthetic": round(diversity(fs), 4),
            "precision": round(precision, 3), "recall": round(recall, 3)}
