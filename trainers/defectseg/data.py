"""Training data in the model frame: label maps framed like their images, and the cache of frozen-trunk features of
augmented views (as the detector's schedule caches its frozen stages, trainers.detector.fit).

Images are framed by trainers.detector.frame.to_frame, the torch twin of the exported graph's pre-processing
(longest side to the frame size, normalised, zero-padded), so training sees the pixels inspection sees. A label map
is framed with the same geometry; the padding is IGNORE (inspection crops it away, so it is nobody's class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.datasets.imageio import read_image, read_mask
from engine.datasets.segmentation import SegSample
from engine.errors import DefectScopeError
from engine.metrics.segmentation import IGNORE
from trainers.common.onnx_export import cpu_session, trace_to_onnx
from trainers.defectseg.augment import augment
from trainers.defectseg.model import SegmentationNet
from trainers.detector.frame import content_shape, to_frame

Progress = Callable[[float, str], None]
COVERAGE = 0.5  # a frame pixel takes a class when at least this share of it is covered by that class


def read_labels(sample: SegSample) -> tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3 uint8, label map H x W uint8: the mask's pixels are sample.label, the rest 0)."""
    image = read_image(sample.image_path)
    if sample.mask_path is None:
        return image, np.zeros(image.shape[:2], np.uint8)
    mask = read_mask(sample.mask_path, shape=image.shape[:2])
    return image, mask.astype(np.uint8) * np.uint8(sample.label)


def frame_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """H x W label map -> size x size uint8 in the model frame (IGNORE in the padding). Each class is resized as
    its coverage (area averaging when shrinking), so a crack thinner than a frame pixel survives down to half."""
    h, w = content_shape(labels.shape[0], labels.shape[1], size)
    shrink = h * w < labels.size
    out = np.full((size, size), IGNORE, np.uint8)
    best = np.zeros((h, w), np.float32)
    framed = np.zeros((h, w), np.uint8)
    for c in np.unique(labels).tolist():
        if c == 0:
            continue
        cover = cv2.resize((labels == c).astype(np.float32), (w, h),
                           interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        take = (cover >= COVERAGE) & (cover > best)
        framed[take], best[take] = c, cover[take]
    out[:h, :w] = framed
    return out


@dataclass
class Cache:
    feats: tuple[torch.Tensor, ...]  # the trunk's taps, [V, C, S/stride, S/stride] float16 each (strides 4..32)
    target: torch.Tensor  # [V, S, S] uint8, IGNORE in the padding
    image_of: np.ndarray  # [V] index of the source image

    @property
    def n_images(self) -> int:
        return len(set(self.image_of.tolist()))


def trunk_runner(net: SegmentationNet, device: torch.device) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The frozen trunk as a function of a frame batch; on the CPU through ONNX Runtime, whose depthwise
    convolutions run several times faster than torch's (as the detector's cache does)."""
    if device.type != "cpu":
        return lambda x: tuple(net.trunk(x.to(device)))
    size = net.arch.image_size
    names = [f"tap{i}" for i in range(len(net.trunk.stages))]
    graph = trace_to_onnx(net.trunk.eval(), (torch.zeros(2, 3, size, size),), ["x"], names,
                          {n: {0: "batch"} for n in ["x", *names]})
    session = cpu_session(graph.SerializeToString())
    return lambda x: tuple(torch.from_numpy(t) for t in session.run(None, {"x": x.numpy()}))


def views_per_image(n_images: int, net: SegmentationNet, wanted: int, max_bytes: float) -> int:
    s = net.arch.image_size
    per_view = s * s + 2 * sum(c * (s // stride) ** 2 for c, stride in zip(net.trunk.channels, net.trunk.strides,
                                                                            strict=True))
    return max(1, min(wanted, int(max_bytes // max(1, per_view * n_images))))


@torch.no_grad()
def build_cache(net: SegmentationNet, samples: Sequence[SegSample], views: int, rng: np.random.Generator,
                device: torch.device, progress: Progress) -> tuple[Cache, list[str]]:
    """`views` views of every readable training image (the first as it is, the others augmented) through the
    frozen stages, with their framed label maps; unreadable images or masks are skipped and listed."""
    size = net.arch.image_size
    feats: list[list[torch.Tensor]] = [[] for _ in net.trunk.stages]
    targets, image_of, skipped = [], [], []
    batch: list[torch.Tensor] = []
    trunk = trunk_runner(net, device)

    def flush() -> None:
        if batch:
            for out, t in zip(feats, trunk(torch.cat(batch)), strict=True):
                out.append(t.half().cpu())
            batch.clear()

    for i, sample in enumerate(samples):
        try:
            image, labels = read_labels(sample)
        except DefectScopeError as exc:
            skipped.append(str(exc))
            continue
        for v in range(views):
            img, lab = (image, labels) if v == 0 else augment(image, labels, rng)
            batch.append(to_frame(img, size))
            targets.append(torch.from_numpy(frame_labels(lab, size)))
            image_of.append(i)
            if len(batch) >= 32:
                flush()
        progress((i + 1) / len(samples), f"caching features: {i + 1}/{len(samples)} images")
    flush()
    if not image_of:
        raise DefectScopeError("no training image could be read: " + "; ".join(skipped[:3]))
    return Cache(tuple(torch.cat(f) for f in feats), torch.stack(targets), np.array(image_of)), skipped
