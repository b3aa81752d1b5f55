"""Anomaly maps -> one-class pseudo boxes (AGSSP's rule, with the public code's bugs fixed). numpy + OpenCV only.

The published rule: normalise the maps the same way across the pool; threshold = mean over the pool of the
per-image map maxima minus a margin (0.1); binarise; external contours with area >= max((H//100)*(W//100), 10) px;
box score = map maximum inside the contour; top-10; NMS at IoU 0.8. What is fixed here:
- their NMS computed IoU from the class id as if it were x1; ours works on the box coordinates (engine.metrics'
  box_iou, the IoU every detector metric here uses);
- they kept the top-k BEFORE NMS, so a suppressed box could push a distinct one out of the k; NMS runs first here;
- an area rule alone drops thin scratches (a 2 px wide, 60 px long line has too little area on a large image), so an
  elongated contour (minAreaRect long side >= `elongation` x short side and >= `min_length_px`) is kept too.

Maps arrive as `CoarseMap`s (a patch grid or a model's map stored small, and how to bring it back to image size),
so a pool of thousands of images never holds its full-size maps at once: `pool_boxes` brings each map to image
size twice, once for the pool statistics (normalisation, threshold), once for its boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from engine.metrics.detection_match import box_iou

# Boxes are found on the map at image size up to this long side; larger images are worked on scaled down (their
# boxes and area rules scaled back), so one line-scan image does not need a gigapixel float map.
MAX_WORK_SIDE = 2048


@dataclass(frozen=True)
class BoxRule:
    """The pseudo-box rule's parameters (defaults: the published values, plus the elongated-contour rule)."""

    margin: float = 0.1  # threshold = mean of the pool's normalised map maxima minus this
    area_cell: int = 100  # minimum area = max((H // area_cell) * (W // area_cell), min_area_px)
    min_area_px: float = 10.0
    elongation: float = 4.0  # a contour whose minAreaRect is this elongated is kept whatever its area...
    min_length_px: float = 10.0  # ...when its long side is at least this long (a speck of noise is not a scratch)
    nms_iou: float = 0.8  # a box overlapping a higher-scored one by more than this is suppressed
    top_k: int = 10  # boxes kept per image, after NMS

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.margin <= 1.0:
            problems.append(f"margin {self.margin} is outside 0..1")
        if self.area_cell < 1 or self.min_area_px < 0:
            problems.append("area_cell must be >= 1 and min_area_px >= 0")
        if self.elongation < 1.0 or self.min_length_px < 0:
            problems.append("elongation must be >= 1 and min_length_px >= 0")
        if not 0.0 < self.nms_iou <= 1.0:
            problems.append(f"nms_iou {self.nms_iou} is outside (0, 1]")
        if self.top_k < 1:
            problems.append(f"top_k {self.top_k} is below 1")
        if problems:
            raise ValueError("box rule: " + "; ".join(problems))

    def min_area(self, height: int, width: int) -> float:
        """The published minimum contour area (px) on an image of this size."""
        return float(max((height // self.area_cell) * (width // self.area_cell), self.min_area_px))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PoolNorm:
    """The one normalisation of a pool's maps: (m - lo) / (hi - lo), lo and hi the pool's smallest and largest
    map values, so every map is on the same [0, 1] scale and one threshold means the same everywhere."""

    lo: float
    hi: float

    @classmethod
    def from_ranges(cls, minima: np.ndarray, maxima: np.ndarray) -> PoolNorm:
        if len(minima) == 0:
            raise ValueError("no maps to normalise")
        return cls(float(np.min(minima)), float(np.max(maxima)))

    def apply(self, values: np.ndarray | float) -> np.ndarray:
        span = self.hi - self.lo
        if span <= 0:  # every map is flat and equal: nothing stands out anywhere
            return np.zeros_like(np.asarray(values, np.float32))
        return (np.asarray(values, np.float32) - np.float32(self.lo)) / np.float32(span)


def pool_threshold(normalised_maxima: np.ndarray, margin: float) -> float:
    """The published threshold: mean over the pool of the per-image (normalised) map maxima, minus the margin."""
    maxima = np.asarray(normalised_maxima, np.float64)
    if maxima.size == 0:
        raise ValueError("no map maxima to threshold")
    return float(maxima.mean() - margin)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS on their coordinates, highest score first (ties: earlier first);
    a box whose IoU with an already kept box exceeds `iou` is suppressed."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= overlaps[i] > iou
    return np.asarray(kept, np.int64)


def is_elongated(contour: np.ndarray, rule: BoxRule, scale: float = 1.0) -> bool:
    """Whether a contour is a thin, long shape (a scratch): its minimum-area rectangle's long side is at least
    `rule.elongation` times its short side and at least `rule.min_length_px` (times `scale` when the map is
    worked on scaled). Sides are in pixels covered: the rectangle runs through pixel centres, so a line of 10
    pixels is 9 long there (and 0 wide), 10 x 1 here."""
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    long_side, short_side = max(w, h) + 1.0, min(w, h) + 1.0
    return long_side >= rule.elongation * short_side and long_side >= rule.min_length_px * scale


def select_boxes(boxes: np.ndarray, scores: np.ndarray, rule: BoxRule) -> np.ndarray:
    """Indices of the boxes kept: NMS on coordinates FIRST, then the top-k by score. (The published code took the
    top-k first, so near-duplicates of the best box filled the k places and NMS then left fewer, distinct boxes
    dropped.)"""
    return nms(boxes, scores, rule.nms_iou)[: rule.top_k]


@dataclass(frozen=True)
class MapBoxes:
    boxes: np.ndarray  # [N, 4] float32 x0, y0, x1, y1 in image pixels (x1, y1 exclusive), scores descending
    scores: np.ndarray  # [N] float32: the normalised map's maximum inside each box's contour


def boxes_from_map(amap: np.ndarray, threshold: float, rule: BoxRule,
                   image_size: tuple[int, int] | None = None) -> MapBoxes:
    """The pseudo boxes of one normalised map at `threshold` (pool units).

    `amap` is normally at image size; when it is a scaled copy, `image_size` (H, W) is the image's, and the area
    and length rules and the boxes are converted between the two."""
    amap = np.asarray(amap, np.float32)
    h, w = amap.shape
    H, W = image_size or (h, w)
    sy, sx = h / H, w / W
    min_area = rule.min_area(H, W) * sx * sy
    binary = (amap > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours:
        # The published rule's area (cv2.contourArea, through pixel centres: a thin scratch has ~0) plus the
        # elongated-shape rule that keeps such scratches.
        if cv2.contourArea(contour) < min_area and not is_elongated(contour, rule, np.sqrt(sx * sy)):
            continue
        x, y, bw, bh = cv2.boundingRect(contour)
        inside = np.zeros((bh, bw), np.uint8)
        cv2.drawContours(inside, [contour - np.array([x, y], np.int32)], -1, 1, thickness=cv2.FILLED)
        roi = amap[y:y + bh, x:x + bw]
        scores.append(float(roi[inside > 0].max()) if inside.any() else float(roi.max()))
        boxes.append((x / sx, y / sy, (x + bw) / sx, (y + bh) / sy))
    if not boxes:
        return MapBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    box_arr, score_arr = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    kept = select_boxes(box_arr, score_arr, rule)
    return MapBoxes(box_arr[kept], score_arr[kept])


@dataclass(frozen=True)
class CoarseMap:
    """One image's anomaly map as stored during scoring (a patch grid, or a model's map reduced), and how to bring
    it to the image's size: bilinear upsampling, then a Gaussian blur of `blur_sigma` image pixels."""

    values: np.ndarray  # [h, w] float32, any resolution
    size: tuple[int, int]  # (H, W) of the image
    blur_sigma: float = 0.0

    def full(self, max_side: int | None = None) -> np.ndarray:
        """The map at image size (or scaled so its long side is at most `max_side`), float32."""
        H, W = self.size
        s = min(1.0, max_side / max(H, W)) if max_side else 1.0
        h, w = max(1, round(H * s)), max(1, round(W * s))
        values = np.asarray(self.values, np.float32)
        out = values if values.shape == (h, w) else cv2.resize(values, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.blur_sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=self.blur_sigma * s, borderType=cv2.BORDER_REFLECT)
        return out


@dataclass
class PoolBoxes:
    norm: PoolNorm
    threshold: float  # in normalised units
    maxima: np.ndarray  # [N] normalised per-image map maxima
    boxes: list[np.ndarray]  # per image [n, 4] float32, image pixels
    scores: list[np.ndarray]  # per image [n] float32, normalised
    maps: np.ndarray  # [N, map_size, map_size] float32 in [0, 1]: each normalised map resized (aspect ignored)

    @property
    def n_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def pool_boxes(maps: Sequence[CoarseMap], rule: BoxRule, map_size: int = 64,
               progress: Callable[[float, str], None] | None = None) -> PoolBoxes:
    """The pool's pseudo boxes: pool normalisation and threshold from every map, then each map's boxes."""
    report = progress or (lambda _f, _m: None)
    n = len(maps)
    if n == 0:
        raise ValueError("no maps")
    minima, maxima = np.zeros(n, np.float64), np.zeros(n, np.float64)
    small = np.zeros((n, map_size, map_size), np.float32)
    for i, m in enumerate(maps):
        full = m.full(MAX_WORK_SIDE)
        minima[i], maxima[i] = float(full.min()), float(full.max())
        small[i] = cv2.resize(full, (map_size, map_size), interpolation=cv2.INTER_AREA)
    norm = PoolNorm.from_ranges(minima, maxima)
    norm_maxima = norm.apply(maxima).astype(np.float64)
    threshold = pool_threshold(norm_maxima, rule.margin)
    boxes, scores = [], []
    for i, m in enumerate(maps):
        found = boxes_from_map(norm.apply(m.full(MAX_WORK_SIDE)), threshold, rule, image_size=m.size)
        boxes.append(found.boxes)
        scores.append(found.scores)
        if (i + 1) % 50 == 0 or i + 1 == n:
            report((i + 1) / n, f"pseudo boxes of {i + 1}/{n} images")
    return PoolBoxes(norm, threshold, norm_maxima, boxes, scores, np.clip(norm.apply(small), 0.0, 1.0))
