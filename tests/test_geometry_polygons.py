"""Mask <-> polygon geometry has one owner: every consumer rasterises a polygon to the same pixels.

Before engine.geometry.polygons, the annotation document and the export snapped vertices to whole pixels while
the segmenter runtime and its training rounded to 1/16 pixel, so a hand-drawn polygon covered different pixels
in the annotation view, the exported MVTec mask and the segmenter's training target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.annotate.document import Shape
from engine.datasets import export_job
from engine.datasets.types import DEFECTIVE, Polygon, Sample
from engine.geometry.polygons import mask_to_polygons, polygons_to_mask
from engine.runtime import segmenter
from trainers.promptseg.data import MaskedImage

H, W = 48, 64

# Float vertices (as drawn with a mouse; whole-pixel snapping changes 15 of its pixels, so the test fails under
# the old annotation / export rule), a sliver, an integer polygon and a degenerate walk-back "polygon".
POLYGONS = [
    [(10.4, 5.6), (40.7, 8.2), (33.5, 30.49), (12.3, 25.5)],
    [(50.2, 3.3), (60.8, 3.7), (55.4, 4.6)],
    [(2, 30), (20, 30), (20, 45), (2, 45)],
    [(45.0, 40.0), (55.0, 44.0), (45.0, 40.0)],
]


def _consumers(points: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """The same polygon rasterised by each place that turns a polygon into pixels."""
    sample = Sample(Path("x.png"), split="test", label=DEFECTIVE, defect_type="crack",
                    polygons=[Polygon(tuple(points), "crack")])
    image = MaskedImage(Path("x.png"), None, Path("."), None, "crack", polygons=(tuple(points),))
    return {
        "annotation": Shape("polygon", "crack", [list(p) for p in points]).mask((H, W)),
        "export": export_job.sample_mask(sample, (W, H)),
        "segmenter": segmenter.polygons_to_mask([points], (H, W)),
        "training": image.read_mask((H, W)),
    }


@pytest.mark.parametrize("index", range(len(POLYGONS)))
def test_a_polygon_covers_the_same_pixels_in_every_consumer(index: int) -> None:
    points = POLYGONS[index]
    want = polygons_to_mask([points], (H, W))
    assert want.any()
    for name, got in _consumers(points).items():
        assert got.shape == (H, W) and got.dtype == bool, name
        assert np.array_equal(got, want), f"{name} rasterises polygon {index} differently"


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.integers(0, H - 12), rng.integers(0, W - 16)
        mask[y:y + rng.integers(3, 12), x:x + rng.integers(3, 16)] = True
    mask[rng.integers(0, H), rng.integers(0, W)] = True  # a one-pixel speck
    if rng.random() < 0.5:
        mask[20:22, 30:34] = False  # often a hole
    return mask


def test_exact_tracing_round_trips_in_export_and_annotation() -> None:
    from app.annotate.document import ImageAnnotations, encode_mask

    rng = np.random.default_rng(7)
    for _ in range(25):
        mask = _random_mask(rng)
        assert np.array_equal(polygons_to_mask(mask_to_polygons(mask, fineness=0, min_area=0), (H, W)), mask)
        exported = export_job.mask_to_polygons(mask, "crack")
        assert all(len(p.points) >= 3 for p in exported)  # every format wants three vertices
        assert np.array_equal(export_job.polygons_to_mask(exported, (W, H)), mask)
        ann = ImageAnnotations("k", W, H, [Shape("mask", "crack", rle=encode_mask(mask))])
        _, traced, union = ann.geometry()
        assert np.array_equal(export_job.polygons_to_mask(traced, (W, H)), mask)
        assert union is not None and np.array_equal(union, mask)
