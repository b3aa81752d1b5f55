"""engine.metrics: hand-computed cases, agreement with exact references, error messages, memory and speed."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

import engine.metrics.pixel as pixel_module
from engine.metrics import (
    aupro,
    evaluate_anomaly,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
    roc_curve_points,
)

# --------------------------------------------------------------------------------------------------- references


def _flatten(maps, masks):
    scores = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    defect = np.concatenate(
        [
            np.zeros(np.size(m), bool) if k is None else (np.asarray(k) != 0).ravel()
            for m, k in zip(maps, masks, strict=True)
        ]
    )
    return scores, defect


def reference_pixel_auroc(maps, masks) -> float:
    scores, defect = _flatten(maps, masks)
    return float(roc_auc_score(defect, scores))


def reference_aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Exact AU-PRO: every distinct score is a threshold (sort all pixels, cumulate, integrate)."""
    weights, n_regions = [], 0
    for m, k in zip(maps, masks, strict=True):
        mask = np.zeros(np.shape(m), bool) if k is None else np.asarray(k) != 0
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())
        inv = np.zeros(n + 1)
        inv[1:] = 1.0 / sizes[1:]
        weights.append(inv[labels.ravel()])
        n_regions += n
    scores, defect = _flatten(maps, masks)
    w = np.concatenate(weights)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fp = np.cumsum(~defect[order]) / np.count_nonzero(~defect)
    pr = np.cumsum(w[order]) / n_regions
    last_of_ties = np.r_[s[1:] != s[:-1], True]
    fpr = np.r_[0.0, fp[last_of_ties]]
    pro = np.r_[0.0, pr[last_of_ties]]
    j = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:j], pro[:j]
    if x[-1] < fpr_limit:
        t = (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x = np.r_[x, fpr_limit]
        y = np.r_[y, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / fpr_limit)


def structured_set(seed: int, n: int, size_range=(90, 150), dtype=np.float32, noise: float = 1.5):
    """Maps of different sizes with blob-shaped defects of many sizes, scored by a blurred noisy detector."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(*size_range, size=2))
        if i % 4 == 3:
            mask = np.zeros((h, w), bool)  # a good image
        else:
            mask = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4) > 0.08
        score = ndimage.gaussian_filter(mask * 1.0 + noise * rng.standard_normal((h, w)), 2)
        maps.append(score.astype(dtype))
        masks.append(mask)
    return maps, masks


@pytest.fixture
def coarse_bins(monkeypatch):
    """Few bins and a small sample, so that small test data runs through the quantile (approximate) path."""
    monkeypatch.setattr(pixel_module, "NORMAL_EDGES", 1000)
    monkeypatch.setattr(pixel_module, "DEFECT_EDGES", 250)
    monkeypatch.setattr(pixel_module, "EXACT_LIMIT", 1250)
    monkeypatch.setattr(pixel_module, "SAMPLE_SIZE", 50_000)


# --------------------------------------------------------------------------------------------------- image level


def test_image_auroc_hand_computed_and_never_flipped():
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert image_auroc(scores, labels) == pytest.approx(0.75)  # 3 of 4 (defect, good) pairs ranked right
    assert image_auroc([-s for s in scores], labels) == pytest.approx(0.25)
    assert image_auroc([0.9, 0.8, 0.1, 0.2], labels) == 0.0
    assert image_auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert image_auroc(np.array([0.2, 0.9]), np.array([False, True])) == 1.0


def test_image_level_errors():
    with pytest.raises(ValueError, match="both good"):
        image_auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="both good"):
        roc_curve_points([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="3 image scores but 2"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        image_auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match=r"image_scores\[1\]"):
        image_auroc([0.1, float("nan"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="at least one defective"):
        f1_max([0.1, 0.2], [0, 0])


def test_f1_max_hand_computed():
    # >= 0.35 flags {0.35, 0.4, 0.8}: TP 2, FP 1 -> P 2/3, R 1, F1 0.8 (better than 0.667 at 0.8, 0.5 at 0.4).
    best, threshold = f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert best == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)
    assert f1_max([0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1]) == (1.0, 0.7)
    assert f1_max([0.3, 0.5], [1, 1]) == (1.0, 0.3)  # only defective images: flag all


def test_roc_curve_points():
    fpr, tpr = roc_curve_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


# --------------------------------------------------------------------------------------------------- hand-computed pixel cases


def _two_regions():
    """10x10: region A (4 px) fully at 0.9; region B (16 px) half at 0.9, half at 0.2; 8 of 80 normals at 0.5."""
    m = np.zeros((10, 10))
    k = np.zeros((10, 10), np.uint8)
    k[0:2, 0:2] = 255
    m[0:2, 0:2] = 0.9
    k[5:9, 5:9] = 255
    m[5:9, 5:9] = 0.2
    m[5:7, 5:9] = 0.9
    m[0, 5:9] = 0.5
    m[9, 0:4] = 0.5
    return m, k


def test_two_regions_pro_curve_is_known():
    m, k = _two_regions()
    # thresholds 0.9 / 0.5 / 0.2 / 0.0 -> (FPR, PRO) = (0, (1 + 0.5) / 2), (0.1, 0.75), (0.1, 1), (1, 1)
    fpr, pro = pro_curve([m], [k])
    np.testing.assert_allclose(fpr, [0, 0, 0.1, 0.1, 1])
    np.testing.assert_allclose(pro, [0, 0.75, 0.75, 1, 1])
    assert aupro([m], [k]) == pytest.approx((0.1 * 0.75 + 0.2 * 1.0) / 0.3)
    assert aupro([m], [k], fpr_limit=0.05) == pytest.approx(0.75)
    assert aupro([m], [k], fpr_limit=1.0) == pytest.approx(0.075 + 0.9)
    fpr, pro = pro_curve([m], [k], fpr_limit=0.3)
    assert fpr[-1] == 0.3 and pro[-1] == 1.0
    # 12 defect pixels at 0.9 beat all 80 normals, 8 at 0.2 beat the 72 normals at 0
    assert pixel_auroc([m], [k]) == pytest.approx((12 * 80 + 8 * 72) / (20 * 80))
    assert aupro([m], [k]) == pytest.approx(reference_aupro([m], [k]), abs=1e-12)


def test_regions_touching_at_a_corner_are_one_region():
    m = np.zeros((8, 8))
    k = np.zeros((8, 8), bool)
    k[0:2, 0:2] = True  # 4 px, detected
    m[0:2, 0:2] = 1.0
    k[2:5, 2:5] = True  # 9 px, missed, touching the first only diagonally
    p = 4 / 13  # one 13-px region under 8-connectivity (4-connectivity would give 0.5)
    assert aupro([m], [k]) == pytest.approx(p + (1 - p) * 0.15)


def test_good_images_add_normal_pixels_only():
    defective = np.zeros((5, 5))
    defective[1:3, 1:3] = 1.0
    mask = defective > 0
    good = np.zeros((10, 10))
    good.flat[:10] = 1.0  # 10 normal pixels tie with the defects
    fpr_at_top = 10 / 121
    expected = (0.5 * fpr_at_top + (0.3 - fpr_at_top)) / 0.3
    assert aupro([defective, good], [mask, None]) == pytest.approx(expected)
    assert aupro([defective, good], [mask, np.zeros((10, 10))]) == pytest.approx(expected)
    assert aupro([defective], [mask]) == 1.0


# --------------------------------------------------------------------------------------------------- agreement with exact references


def _variant(maps, name):
    if name == "quantised":  # thousands of distinct values, each shared by many pixels
        return [np.round(m.astype(np.float64), 3) for m in maps]
    if name == "clipped":  # half the pixels tied at exactly 0
        return [np.maximum(m - np.median(m), 0).astype(np.float64) for m in maps]
    if name == "uniform-noise":
        rng = np.random.default_rng(7)
        return [rng.random(m.shape) for m in maps]
    return maps


@pytest.mark.parametrize("variant", ["smooth", "quantised", "clipped", "uniform-noise"])
def test_binned_metrics_match_exact_references(coarse_bins, variant):
    maps, masks = structured_set(seed=3, n=14)
    maps = _variant(maps, variant)
    assert sum(m.size for m in maps) > pixel_module.SAMPLE_SIZE  # subsampled thresholds, not the exact path
    errors = {
        "pixel_auroc": pixel_auroc(maps, masks) - reference_pixel_auroc(maps, masks),
        "aupro": aupro(maps, masks) - reference_aupro(maps, masks),
        "aupro@0.05": aupro(maps, masks, 0.05) - reference_aupro(maps, masks, 0.05),
        "aupro@1": aupro(maps, masks, 1.0) - reference_aupro(maps, masks, 1.0),
    }
    print(variant, {k: f"{v:.1e}" for k, v in errors.items()})
    for name, err in errors.items():
        assert abs(err) < 2e-3, name


def test_default_resolution_matches_exact_references_on_a_million_pixels():
    maps, masks = structured_set(seed=11, n=9, size_range=(330, 400), noise=2.5)
    assert sum(m.size for m in maps) > pixel_module.SAMPLE_SIZE
    err_auroc = pixel_auroc(maps, masks) - reference_pixel_auroc(maps, masks)
    err_aupro = aupro(maps, masks) - reference_aupro(maps, masks)
    print(f"default bins: pixel AUROC error {err_auroc:.1e}, AU-PRO error {err_aupro:.1e}")
    assert abs(err_auroc) < 2e-4
    assert abs(err_aupro) < 2e-4


def test_few_distinct_values_are_exact():
    maps, masks = structured_set(seed=5, n=6)
    maps = [np.round(m, 1) for m in maps]  # a few dozen distinct values: every one is a threshold
    assert pixel_auroc(maps, masks) == pytest.approx(reference_pixel_auroc(maps, masks), abs=1e-12)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=1e-12)


def test_perfect_inverted_and_random_maps(coarse_bins):
    _, masks = structured_set(seed=2, n=14)
    rng = np.random.default_rng(0)
    perfect = [k + 0.9 * rng.random(k.shape) for k in masks]  # every defect pixel above every normal one
    assert pixel_auroc(perfect, masks) == 1.0
    assert aupro(perfect, masks) == 1.0
    inverted = [-p for p in perfect]
    assert pixel_auroc(inverted, masks) == 0.0  # reported as is, not flipped to 1.0
    assert aupro(inverted, masks) == pytest.approx(0.0, abs=1e-9)
    noise = [rng.random(k.shape) for k in masks]
    assert pixel_auroc(noise, masks) == pytest.approx(0.5, abs=0.01)
    assert aupro(noise, masks) == pytest.approx(0.15, abs=0.01)  # PRO ~ FPR: 0.3^2 / 2 / 0.3


def test_array_and_list_inputs_agree_and_dtypes_are_accepted():
    rng = np.random.default_rng(4)
    masks = rng.random((5, 40, 30)) > 0.9
    maps = rng.random((5, 40, 30)).astype(np.float32) + masks
    expected = aupro(list(maps), list(masks))
    assert aupro(maps, masks) == expected
    assert aupro(maps, masks.astype(np.uint8) * 255) == expected
    as_bytes = (maps * 100).astype(np.uint8)
    assert pixel_auroc(as_bytes, masks) == pytest.approx(reference_pixel_auroc(as_bytes, masks), abs=1e-12)


# --------------------------------------------------------------------------------------------------- errors


def test_pixel_input_errors_name_the_culprit():
    a, b = np.zeros((4, 4)), np.zeros((5, 5))
    ka, kb = np.ones((4, 4)), np.ones((5, 6))
    with pytest.raises(
        ValueError, match=r"anomaly_maps\[1\] has shape \(5, 5\) but gt_masks\[1\] has shape \(5, 6\)"
    ):
        pixel_auroc([a, b], [ka, kb])
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\] has shape"):
        aupro([a, b], [ka, kb])
    with pytest.raises(ValueError, match="2 anomaly maps but 1"):
        aupro([a, b], [ka])
    with pytest.raises(ValueError, match="N x H x W"):
        aupro(a, ka)
    with pytest.raises(ValueError, match=r"gt_masks\[0\] must be a 2-D"):
        aupro([a], [np.ones(16)])
    bad = a.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"anomaly_maps\[1\] contains NaN"):
        aupro([a, bad], [None, ka])
    with pytest.raises(ValueError, match="needs defect pixels"):
        aupro([a], [np.zeros((4, 4))])
    with pytest.raises(ValueError, match="needs defect pixels"):
        pixel_auroc([a], [None])
    with pytest.raises(ValueError, match="every pixel"):
        pixel_auroc([a], [ka])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro([a], [ka], fpr_limit=0.0)


# --------------------------------------------------------------------------------------------------- evaluate_anomaly


def test_evaluate_anomaly_reports_everything_in_one_pass():
    maps, masks = structured_set(seed=9, n=8)
    scores = [float(m.max()) for m in maps]
    labels = [int(k.any()) for k in masks]
    masks_with_none = [k if k.any() else None for k in masks]
    report = evaluate_anomaly(scores, labels, maps, masks_with_none)
    assert report["image_auroc"] == image_auroc(scores, labels)
    assert (report["f1_max"], report["threshold"]) == f1_max(scores, labels)
    assert report["pixel_auroc"] == pixel_auroc(maps, masks)
    assert report["aupro"] == aupro(maps, masks)
    assert 0 < report["pixel_f1_max"] <= 1


def test_evaluate_anomaly_without_pixel_ground_truth():
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    maps = [np.zeros((3, 3))] * 4
    for masks in (None, [None] * 4, [np.zeros((3, 3))] * 4):
        report = evaluate_anomaly(scores, labels, maps, masks)
        assert report["pixel_auroc"] is None and report["aupro"] is None
        assert report["image_auroc"] == pytest.approx(0.75)
    assert set(report) >= {"image_auroc", "pixel_auroc", "aupro", "f1_max", "threshold"}
    with pytest.raises(ValueError, match="without anomaly_maps"):
        evaluate_anomaly(scores, labels, None, [None] * 4)


# --------------------------------------------------------------------------------------------------- memory and speed


def test_forty_megapixel_maps_fit_in_little_memory():
    """40 maps of 1024 x 1024 (42 M pixels, 168 MB of float32 input): measured ~45 MB peak, ~2 s on 2 cores."""
    rng = np.random.default_rng(0)
    maps = rng.random((40, 1024, 1024), dtype=np.float32)
    masks = np.zeros(maps.shape, bool)
    for i in range(0, 40, 2):
        for _ in range(3):
            y, x = rng.integers(0, 900, size=2)
            s = int(rng.integers(10, 120))
            masks[i, y : y + s, x : x + s] = True
    maps[masks] += 0.5
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        report = evaluate_anomaly(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"40 x 1024 x 1024: {elapsed:.2f} s, tracemalloc peak {peak / 2**20:.1f} MiB, {report}")
    assert peak < 120 * 2**20  # the input alone is 210 MB; a sort-based evaluation needs > 1 GB
    assert elapsed < 60  # ~2 s here; generous so a busy machine does not fail it
    assert 0.8 < report["pixel_auroc"] < 0.95
