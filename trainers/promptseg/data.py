"""Training data of the promptable segmenter: defective images with masks, the train/held-out split, and caches.

Only defective images with pixel masks carry what the segmenter learns (where a prompted defect ends); good
images have no defect to prompt. The split is deterministic and stratified: within each (dataset, category,
defect type), every k-th image in file order is held out, so a held-out part covers every defect type and the
same images are held out on every run (the benchmark scores exactly the held-out list in segmenter.json).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets.imageio import read_image, read_mask
from engine.errors import DatasetError, DefectScopeError
from engine.geometry.polygons import polygons_to_mask
from trainers.promptseg.prompts import Defect, merge_gap_pixels, split_defects

# cv2.flip codes of the training augmentations: none, horizontal, vertical, both.
FLIPS: tuple[int | None, ...] = (None, 1, 0, -1)
MAX_STORED_POINTS = 2000  # pixel coordinates kept per defect to draw prompts from (subsampled beyond)


@dataclass(frozen=True)
class DataSource:
    """A dataset root and, optionally, the categories of it to use (default: every category)."""

    root: Path
    categories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MaskedImage:
    """One defective image with its pixel mask or, for polygon formats (COCO, labelme), its polygons."""

    image_path: Path
    mask_path: Path | None
    root: Path
    category: str | None
    defect_type: str | None
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()

    def read_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The bool mask of the image (H, W); polygons rasterised by the one rule (engine.geometry.polygons)."""
        if self.mask_path is not None:
            return read_mask(self.mask_path, shape)
        return polygons_to_mask(self.polygons, shape)


@dataclass
class DefectExample:
    """One defect of one (possibly flipped) training image, prepared for prompt sampling.

    Coordinates are in the model frame (original pixels * input_size / max(H, W)).
    target: uint8 soft mask (0..255) at the loss resolution, padded like the model input.
    """

    variant: int  # index into the feature cache
    target: np.ndarray
    box: tuple[float, float, float, float]
    inside: np.ndarray  # K x 2 (x, y) defect pixels
    ring: np.ndarray  # M x 2 (x, y) background pixels just outside the defect
    content: tuple[int, int]  # (h, w) of the resized image inside the padded frame
    group: str = ""  # "<dataset root>|<category>", for balanced sampling


@dataclass
class FeatureCache:
    """Trunk taps per image variant (float16, to halve memory) and the defects of each variant."""

    taps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    examples: list[DefectExample] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def collect_masked_images(sources: Sequence[DataSource]) -> list[MaskedImage]:
    """Every defective image with a mask in the sources; clear errors for unusable input."""
    found: list[MaskedImage] = []
    for src in sources:
        root = Path(src.root)
        dataset = load_dataset(root)
        wanted = set(src.categories) if src.categories else None
        if wanted is not None:
            unknown = sorted(wanted - set(dataset.categories))
            if unknown:
                known = ", ".join(dataset.categories) or "none (a single-category dataset)"
                raise DatasetError(f"{root}: unknown categories {', '.join(unknown)}; known: {known}")
        items = [
            MaskedImage(s.image_path, s.mask_path, root, s.category, s.defect_type,
                        tuple(p.points for p in s.polygons))
            for s in dataset.samples
            if (wanted is None or s.category in wanted)
            and ((s.label == DEFECTIVE and s.mask_path is not None)
                 or (s.mask_path is None and s.polygons and s.label != GOOD))  # polygon formats
        ]
        if not items:
            what = f"categories {', '.join(sorted(wanted))}" if wanted else "the dataset"
            raise DatasetError(
                f"{root}: {what} has no defective images with pixel masks; the segmenter learns from defect "
                f"masks (MVTec ground_truth/, VisA masks, COCO/labelme polygons)")
        found.extend(items)
    return sorted(found, key=lambda m: (str(m.root), m.category or "", m.defect_type or "", str(m.image_path)))


def split_holdout(items: list[MaskedImage], fraction: float) -> tuple[list[MaskedImage], list[MaskedImage]]:
    """(train, held out): every k-th image of each (root, category, defect type) group is held out.

    Groups with a single image stay in training (holding it out would leave its defect type unseen).
    """
    if not 0.0 <= fraction < 1.0:
        raise DefectScopeError(f"holdout_fraction must be in [0, 1) (got {fraction})")
    groups: dict[tuple[str, str, str], list[MaskedImage]] = defaultdict(list)
    for m in items:
        groups[(str(m.root), m.category or "", m.defect_type or "")].append(m)
    train, hold = [], []
    for members in groups.values():
        n = len(members)
        n_hold = min(n - 1, round(n * fraction)) if n >= 2 and fraction > 0 else 0
        hold_idx: set[int] = set()
        if n_hold > 0:
            step = n / n_hold
            hold_idx = {int(i * step + step / 2) for i in range(n_hold)}
        for i, m in enumerate(members):
            (hold if i in hold_idx else train).append(m)
    return train, hold


def image_defects(mask: np.ndarray, merge_gap_fraction: float, min_area_model_px: float,
                  input_size: int) -> list[Defect]:
    """The defects of a full-resolution mask; `min_area_model_px` is in model-frame pixels (scale-free)."""
    scale = input_size / max(mask.shape)
    min_area = max(1, int(np.ceil(min_area_model_px / (scale * scale))))
    return split_defects(mask, merge_gap_pixels(mask.shape, merge_gap_fraction), min_area)


def resized_content(shape: tuple[int, int], input_size: int) -> tuple[int, int]:
    """(h, w) of an image of `shape` inside the model frame (the encoder graph's rounding)."""
    scale = input_size / max(shape)
    return max(1, int(np.floor(shape[0] * scale + 0.5))), max(1, int(np.floor(shape[1] * scale + 0.5)))


def frame_target(mask: np.ndarray, input_size: int, out_size: int) -> np.ndarray:
    """A full-resolution bool mask -> uint8 soft mask (0..255) of the padded model frame at out_size^2.

    Area-resampled so a thin crack keeps a proportional soft footprint instead of vanishing.
    """
    h, w = resized_content(mask.shape, input_size)
    frame = np.zeros((input_size, input_size), np.float32)
    frame[:h, :w] = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    if out_size != input_size:
        frame = cv2.resize(frame, (out_size, out_size), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(frame * 255), 0, 255).astype(np.uint8)


def _subsample(xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(xy) > MAX_STORED_POINTS:
        xy = xy[rng.choice(len(xy), MAX_STORED_POINTS, replace=False)]
    return xy.astype(np.float32)


def defect_examples(mask: np.ndarray, defects: list[Defect], input_size: int, loss_size: int, variant: int,
                    ring_fraction: float, rng: np.random.Generator) -> list[DefectExample]:
    """Prompt-sampling material for each defect of one image variant (coordinates in the model frame)."""
    scale = input_size / max(mask.shape)
    content = resized_content(mask.shape, input_size)
    all_defects = mask > 0
    ring_px = max(2, round(ring_fraction * max(mask.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
    out = []
    for d in defects:
        ys, xs = np.nonzero(d.mask)
        band = cv2.dilate(d.mask.astype(np.uint8), kernel).astype(bool) & ~all_defects
        ry, rx = np.nonzero(band)
        out.append(DefectExample(
            variant=variant,
            target=frame_target(d.mask, input_size, loss_size),
            box=tuple(float(v) * scale for v in d.box),  # type: ignore[arg-type]
            inside=_subsample(np.stack([xs, ys], 1), rng) * scale,
            ring=_subsample(np.stack([rx, ry], 1), rng) * scale,
            content=content,
        ))
    return out


def _add_image(cache: FeatureCache, image: np.ndarray, mask: np.ndarray, group: str,
               taps_session: ort.InferenceSession, input_size: int, loss_size: int, flips: Sequence[int | None],
               merge_gap_fraction: float, min_area_model_px: float, ring_fraction: float,
               rng: np.random.Generator) -> bool:
    """Trunk taps and defect examples of one image in every flip variant; False when it has no usable defect."""
    defects_any = image_defects(mask, merge_gap_fraction, min_area_model_px, input_size)
    if not defects_any:
        return False
    for code in flips:
        img = image if code is None else np.ascontiguousarray(cv2.flip(image, code))
        m = mask if code is None else cv2.flip(mask.astype(np.uint8), code) > 0
        defects = defects_any if code is None else image_defects(m, merge_gap_fraction, min_area_model_px,
                                                                 input_size)
        taps = taps_session.run(None, {"image": img})
        cache.taps.append(tuple(t[0].astype(np.float16) for t in taps))  # type: ignore[arg-type]
        examples = defect_examples(m, defects, input_size, loss_size, len(cache.taps) - 1, ring_fraction, rng)
        for ex in examples:
            ex.group = group
        cache.examples.extend(examples)
    return True


def build_cache(
    items: list[MaskedImage],
    taps_session: ort.InferenceSession,
    input_size: int,
    loss_size: int,
    flips: Sequence[int | None],
    merge_gap_fraction: float,
    min_area_model_px: float,
    ring_fraction: float,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    synthetic: Iterable[tuple[np.ndarray, np.ndarray, str]] = (),
    n_synthetic: int = 0,
) -> FeatureCache:
    """Trunk taps and defect examples of every image in every flip variant (unreadable files are skipped).

    `synthetic` (image, mask, group) samples (`n_synthetic` of them, for progress) are added once each, without
    flips (they are random already).
    """
    cache = FeatureCache()
    rng = np.random.default_rng(seed)
    common = dict(taps_session=taps_session, input_size=input_size, loss_size=loss_size,
                  merge_gap_fraction=merge_gap_fraction, min_area_model_px=min_area_model_px,
                  ring_fraction=ring_fraction, rng=rng)
    total = len(items) + n_synthetic
    for i, item in enumerate(items):
        try:
            image = read_image(item.image_path)
            mask = item.read_mask(image.shape[:2])
        except DefectScopeError as exc:
            cache.skipped.append(str(exc))
            continue
        if _add_image(cache, image, mask, f"{item.root}|{item.category or ''}", flips=flips,
                      **common):  # type: ignore[arg-type]
            cache.images.append(str(item.image_path))
        if progress:
            progress(i + 1, total)
    for j, (image, mask, group) in enumerate(synthetic):
        _add_image(cache, image, mask, group, flips=FLIPS[:1], **common)  # type: ignore[arg-type]
        if progress:
            progress(len(items) + j + 1, total)
    return cache
