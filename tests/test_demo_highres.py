"""Generated parts at real shape and resolution (engine.datasets.demo_highres): an elongated shaft with hairline
cracks and a 24-megapixel panel with 15-px defects, in the MVTec layout our readers load, masks exactly on the
painted pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from engine.datasets.demo_highres import generate_highres, render
from engine.datasets.registry import load_dataset
from engine.errors import DefectScopeError


def test_shaft_is_elongated_with_hairline_cracks_that_a_square_stretch_erases(tmp_path: Path) -> None:
    import cv2

    root = generate_highres(tmp_path / "shaft", "shaft", n_train=3, n_test_good=2, n_test_defect=4)
    ds = load_dataset(root)
    assert not ds.issues
    kinds = sorted({(s.split, s.defect_type or "good") for s in ds.samples})
    assert kinds == [("test", "crack"), ("test", "good"), ("train", "good")]
    for s in ds.samples:
        if s.split != "test" or s.mask_path is None:
            continue
        img = cv2.imread(str(s.image_path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE) > 0
        assert img.shape == (500, 1250) and mask.any()
        # hairline: no mask pixel is more than 1 px from the crack's edge
        # (OpenCV's transform: scipy's distance_transform_edt stalled for minutes on these masks)
        assert cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5).max() <= 1.5
        ring = binary_dilation(mask, iterations=3) & ~mask
        assert img[ring].mean() - img[mask].mean() > 20  # darker than the metal around it
        # stretched to 256 x 256 the crack loses a third of its contrast or more (why the input policy matters)
        small = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA).astype(float)
        m_small = cv2.resize(mask.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA) > 0.2
        r_small = binary_dilation(m_small, iterations=2) & ~m_small
        assert small[r_small].mean() - small[m_small].mean() < 0.7 * (img[ring].mean() - img[mask].mean())


def test_panel_is_24_megapixels_with_15px_defects_and_is_deterministic() -> None:
    img, mask = render("panel", True, seed=0, index=0)
    assert img.shape == (4000, 6000) and img.dtype == np.uint8
    import cv2

    n, _labels, stats, _c = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    assert 1 <= n - 1 <= 3
    # each defect about 15 px across: a few hundredths of a percent of the image
    assert all(5 <= max(w, h) <= 20 for _x, _y, w, h, _a in stats[1:])
    assert mask.sum() < 3 * 15 * 15
    again, _mask = render("panel", True, seed=0, index=0, height=800, width=1200)
    assert again.shape == (800, 1200)
    a, m = render("panel", True, seed=0, index=1, height=800, width=1200)
    b, m2 = render("panel", True, seed=0, index=1, height=800, width=1200)
    assert np.array_equal(a, b) and np.array_equal(m, m2)
    _good, gmask = render("panel", False, seed=0, index=1, height=800, width=1200)
    assert not gmask.any()


def test_bad_requests_are_named() -> None:
    with pytest.raises(DefectScopeError, match="unknown high-resolution part 'gear'"):
        render("gear", True, 0, 0)
    with pytest.raises(DefectScopeError, match="too small"):
        render("panel", True, 0, 0, height=60, width=60)


def test_cli_writes_a_part_set_and_refuses_a_full_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    out = tmp_path / "panel"
    assert main(["demo-part", "panel", "--out", str(out), "--n-train", "1", "--n-test-good", "0",
                 "--n-test-defect", "1", "--height", "600", "--width", "900"]) == 0
    ds = load_dataset(out)
    assert len(ds.samples) == 2 and not ds.issues
    assert main(["demo-part", "panel", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
