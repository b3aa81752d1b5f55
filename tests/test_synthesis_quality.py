"""Sample-quality measures of synthetic defects (trainers.defectgen.quality): the mask-alignment check passes real
masks and fails the same masks moved off their defects; precision / recall and diversity behave as defined on
real features of generated defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.datasets.imageio import read_image, read_mask
from tests.test_defect_segmentation import CLASSES, write_mvtec

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[np.ndarray, np.ndarray]]:
    root = write_mvtec(tmp_path_factory.mktemp("quality") / "tiles")
    out = []
    for kind in CLASSES:
        for p in sorted((root / "test" / kind).glob("*.png")):
            image = read_image(p)
            out.append((image, read_mask(root / "ground_truth" / kind / f"{p.stem}_mask.png", image.shape[:2])))
    return out


def test_alignment_check_passes_real_masks_and_fails_shifted_ones(pairs) -> None:
    from trainers.defectgen.quality import aligned_share, alignment_check, alignment_ratio

    share, n = aligned_share(pairs)
    assert n == len(pairs) and share >= 0.9
    # the same masks moved off their defects (rolled, so each keeps its shape and size, to where it does not
    # touch its defect)
    from scipy.ndimage import binary_dilation

    def off_defect(mask: np.ndarray) -> np.ndarray:
        near = binary_dilation(mask, iterations=3)
        moved = [np.roll(mask, shift, axis=(0, 1)) for shift in ((64, 0), (0, 64), (64, 64), (32, 96), (96, 32))]
        return next(m for m in moved if not (m & near).any())

    shifted = [(image, off_defect(mask)) for image, mask in pairs]
    shifted_share, _ = aligned_share(shifted)
    assert shifted_share <= 0.2
    assert alignment_check(share, share) and not alignment_check(shifted_share, share)
    # a mask on a flat image has nothing to align with
    flat = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 20:30] = True
    assert alignment_ratio(flat, mask) < 2.0


def test_features_precision_recall_and_diversity(pairs) -> None:
    from trainers.defectgen.quality import (
        WindowFeatures,
        defect_window,
        diversity,
        precision_recall,
        quality_report,
    )

    windows = [defect_window(i, m) for i, m in pairs]
    assert all(w.shape == (128, 128, 3) for w in windows)
    feats = WindowFeatures()(windows)
    assert feats.shape[0] == len(pairs) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-4)
    # the same set: every point inside the other's balls
    assert precision_recall(feats, feats) == (1.0, 1.0)
    # a set far from the real one: inside no ball, and covering none
    far = feats + 10.0
    assert precision_recall(feats, far) == (0.0, 0.0)
    # copies of one window have no diversity; the real windows do
    assert diversity(np.repeat(feats[:1], 5, axis=0)) == 0.0 < diversity(feats)
    # bars and discs are told apart: each type's windows are nearer their own kind
    kinds = np.array([k for k in CLASSES for _ in range(len(pairs) // len(CLASSES))])
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = d[kinds[:, None] == kinds[None]].mean()
    assert same < d[kinds[:, None] != kinds[None]].mean()
    report = quality_report(pairs[:6], pairs[6:])
    assert report["n_real"] == 6 and report["alignment_check_passed"] is True
    assert 0.0 <= report["precision"] <= 1.0 and 0.0 <= report["recall"] <= 1.0


def test_module_reads_files_it_is_given(tmp_path: Path) -> None:
    from trainers.defectgen.quality import aligned_share

    # nothing to measure is an honest zero, not a crash
    assert aligned_share([]) == (0.0, 0)
