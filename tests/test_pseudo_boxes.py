"""Pseudo boxes from anomaly maps (issue 16): the AGSSP box rule with its bugs fixed, the run folder's one layout,
the pool kept apart from evaluation images, and the pseudo_boxes job end to end with mutual scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import DefectScopeError
from engine.pseudo_boxes import (
    BoxRule,
    CoarseMap,
    PoolNorm,
    boxes_from_map,
    nms,
    pool_boxes,
    pool_threshold,
    select_boxes,
)

# ---------------------------------------------------------------------------------------------------------------
# The box rule


def test_a_thin_scratch_is_kept_where_the_area_rule_alone_drops_it():
    amap = np.zeros((1000, 1000), np.float32)
    cv2.line(amap, (200, 300), (500, 340), 1.0, thickness=1)  # 1 px wide: contour area ~0 < 100 px minimum
    found = boxes_from_map(amap, 0.5, BoxRule())
    assert len(found.boxes) == 1
    x0, y0, x1, y1 = found.boxes[0]
    assert (x0, y0) == (200, 300) and (x1, y1) == (501, 341)
    # the published rule (area only) loses it: an elongation no contour reaches switches the shape rule off
    assert len(boxes_from_map(amap, 0.5, BoxRule(elongation=1e9)).boxes) == 0
    # a straight 10-px line is 10 px long (not the 9 between its end pixels' centres): kept at min_length_px 10
    line = np.zeros((100, 100), np.float32)
    line[50, 20:30] = 1.0
    assert len(boxes_from_map(line, 0.5, BoxRule(min_length_px=10)).boxes) == 1
    assert len(boxes_from_map(line, 0.5, BoxRule(min_length_px=11)).boxes) == 0


def test_a_tiny_speck_is_dropped_and_a_blob_is_kept_with_the_map_max_inside_as_score():
    amap = np.zeros((1000, 1000), np.float32)
    amap[100:103, 100:103] = 1.0  # 3 x 3 speck: area 4 < max(10 * 10, 10) and not elongated
    cv2.circle(amap, (600, 600), 12, 0.7, thickness=-1)  # area ~450 px
    amap[605, 598] = 0.93  # the blob's peak
    amap[0:2, 990:1000] = 1.0  # 2 x 10 bar: elongated (5:1) but shorter than min_length_px... at the limit
    found = boxes_from_map(amap, 0.5, BoxRule(min_length_px=11))
    assert len(found.boxes) == 1
    assert found.boxes[0].tolist() == [588, 588, 613, 613]
    assert found.scores[0] == pytest.approx(0.93)
    assert BoxRule().min_area(1000, 1000) == 100 and BoxRule().min_area(150, 90) == 10


def test_nms_suppresses_by_box_coordinates():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [0, 0, 10, 13]], np.float32)
    scores = np.array([0.9, 0.8, 0.85, 0.95], np.float32)
    # IoUs with box 3 [0,0,10,13]: box 0 10/13 = 0.77 (kept at 0.8), box 1 11/13 = 0.85 (suppressed)
    assert nms(boxes, scores, 0.8).tolist() == [3, 0, 2]
    # The published bug read the class id (here 0 for every box) as x1, so every IoU was 0 and nothing went.
    assert nms(boxes, scores, 0.7).tolist() == [3, 2]
    # same scores, far apart: both kept; identical boxes: one kept, the first given
    assert nms(np.array([[0, 0, 5, 5], [50, 50, 60, 60]]), np.array([0.5, 0.5]), 0.8).tolist() == [0, 1]
    assert nms(np.array([[0, 0, 5, 5], [0, 0, 5, 5]]), np.array([0.5, 0.5]), 0.8).tolist() == [0]


def test_top_k_is_taken_after_nms_so_distinct_boxes_are_not_crowded_out():
    boxes = np.array([[0, 0, 100, 100], [0, 0, 100, 101], [0, 0, 101, 100], [300, 300, 340, 340]], np.float32)
    scores = np.array([0.99, 0.98, 0.97, 0.6], np.float32)
    kept = select_boxes(boxes, scores, BoxRule(top_k=2, nms_iou=0.8))
    assert kept.tolist() == [0, 3]
    # the published order (top-2 first, then NMS) would have kept the best box alone
    top2 = np.argsort(-scores)[:2]
    assert nms(boxes[top2], scores[top2], 0.8).size == 1


def test_threshold_is_the_mean_of_the_pools_normalised_maxima_minus_the_margin():
    assert pool_threshold(np.array([0.9, 0.7, 0.8]), 0.1) == pytest.approx(0.7)
    rng = np.random.default_rng(0)
    maps = []
    for peak in (2.0, 4.0, 6.0):  # raw units: the pool normalisation puts every map on one scale
        values = rng.uniform(0.0, 0.5, (40, 60)).astype(np.float32)
        values[10:20, 30:40] = peak
        maps.append(CoarseMap(values, (40, 60)))
    result = pool_boxes(maps, BoxRule(margin=0.1), map_size=16)
    lo = min(float(m.values.min()) for m in maps)
    assert result.norm == PoolNorm(lo, 6.0)
    norm_max = (np.array([2.0, 4.0, 6.0]) - lo) / (6.0 - lo)
    assert result.maxima == pytest.approx(norm_max, abs=1e-6)
    assert result.threshold == pytest.approx(norm_max.mean() - 0.1, abs=1e-6)
    # one pool threshold: the weakest map's peak is below it, so that image gets no box; the others one each
    assert [len(b) for b in result.boxes] == [0, 1, 1]
    assert result.boxes[2].tolist() == [[30, 10, 40, 20]]
    assert result.scores[2][0] == pytest.approx(1.0)
    assert result.maps.shape == (3, 16, 16) and result.maps.min() >= 0.0 and result.maps.max() <= 1.0


def test_a_coarse_map_is_brought_to_image_size_and_huge_images_are_boxed_scaled():
    grid = np.zeros((8, 8), np.float32)
    grid[2, 5] = 1.0
    full = CoarseMap(grid, (80, 120), blur_sigma=2.0).full()
    assert full.shape == (80, 120)
    y, x = np.unravel_index(np.argmax(full), full.shape)
    assert 20 <= y <= 30 and 70 <= x <= 85
    amap = np.zeros((1000, 1000), np.float32)
    amap[100:200, 300:500] = 1.0
    found = boxes_from_map(amap, 0.5, BoxRule(), image_size=(4000, 4000))  # a map at 1/4 of the image
    assert found.boxes.tolist() == [[1200, 400, 2000, 800]]


def test_the_rule_refuses_bad_parameters():
    with pytest.raises(ValueError, match="nms_iou"):
        BoxRule(nms_iou=0.0)
    with pytest.raises(ValueError, match="top_k"):
        BoxRule(top_k=0)


# ---------------------------------------------------------------------------------------------------------------
# Generated data: textured surfaces with painted defects, and a labelled evaluation set


N_SURFACES = 12
# Which surfaces get a painted defect, and which: a few (mutual scoring assumes a defect is shared by few images;
# its patch score averages the closest 30 % of the references, so a look that a third of the pool shares is normal).
PAINTED = {1: ("blob", 90), 5: ("scratch", 90), 8: ("scratch", -80), 10: ("blob", -80)}


def _surfaces(folder: Path) -> dict[str, np.ndarray]:
    """12 brushed-metal surfaces (the demo's texture renderer); 4 with a bright or dark scratch or blob painted on.
    Returns file name -> true boxes (connected components of what was painted)."""
    from engine.datasets.demo_render import render_sample

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    truth = {}
    for i in range(N_SURFACES):
        img = render_sample("brushed_metal", split="train", index=i, image_size=160, seed=3).image.astype(np.float32)
        mask = np.zeros(img.shape[:2], np.uint8)
        if i in PAINTED:
            shape, tone = PAINTED[i]
            if shape == "scratch":
                x0, y0 = rng.integers(20, 60, 2)
                cv2.line(mask, (int(x0), int(y0)), (int(x0 + rng.integers(50, 80)), int(y0 + rng.integers(20, 60))),
                         1, thickness=2)
            else:
                cv2.circle(mask, tuple(int(v) for v in rng.integers(40, 120, 2)), int(rng.integers(7, 11)), 1, -1)
            img = np.where(mask > 0, np.clip(img + tone, 0, 255), img)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        name = f"surface_{i:02d}.png"
        truth[name] = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n]], np.float32).reshape(-1, 4)
        cv2.imwrite(str(folder / name), img.astype(np.uint8))
    return truth


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labelled set (MVTec layout with masks): its detection test split must never enter a pool."""
    from engine.datasets.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("evalset") / "demo"
    return generate_demo_dataset(root, categories=["brushed_metal"], n_train=4, n_test_good=2,
                                 n_test_defect_per_type=3, image_size=96, seed=2)


def _test_images(root: Path) -> list[Path]:
    from engine.datasets.detection import load_detection_set

    return [Path(s.image_path).resolve() for s in load_detection_set(root).select("test")]


# ---------------------------------------------------------------------------------------------------------------
# Exclusion of evaluation images


def test_a_renamed_copy_of_a_test_image_is_dropped_and_the_final_check_catches_any_left(eval_set, tmp_path):
    from engine.pseudo_pool import assemble_pool, check_excluded, excluded_test_images

    tests = _test_images(eval_set)
    assert len(tests) >= 2
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    shutil.copy(tests[0], pool_dir / "innocent_name.png")  # same bytes, another name and folder
    keep = [p for p in sorted((eval_set / "brushed_metal" / "train" / "good").glob("*.png")) if p.resolve() not in tests]
    for p in keep:
        shutil.copy(p, pool_dir / f"copy_{p.name}")
    test_dir = eval_set / "brushed_metal" / "test"  # the originals, by path
    n_under_test_dir = sum(1 for t in tests if t.is_relative_to(test_dir.resolve()))

    pool = assemble_pool([pool_dir, test_dir], exclude=[eval_set])
    assert pool.excluded_count == 1 + n_under_test_dir
    assert pool_dir.resolve() / "innocent_name.png" not in pool.images
    assert not set(pool.images) & set(tests)
    assert len([p for p in pool.images if p.parent == pool_dir.resolve()]) == len(keep)
    assert pool.excluded.sources == (str(eval_set.resolve()),)

    assert pool.warnings == []

    # Without the exclusion the copy is an ordinary pool image; the check then refuses the pool.
    unchecked = assemble_pool([pool_dir])
    assert unchecked.warnings == []  # a plain folder of copies: nothing says it is a labelled set
    forgotten = assemble_pool([test_dir])  # the labelled set's own test folder, no exclude: warned, naming its root
    assert len(forgotten.warnings) == 1 and forgotten.warnings[0].startswith(f"{eval_set.resolve()}: a labelled")
    assert f"--exclude {eval_set.resolve()}" in forgotten.warnings[0]
    assert pool_dir.resolve() / "innocent_name.png" in unchecked.images
    with pytest.raises(DefectScopeError, match=r"innocent_name\.png") as err:
        check_excluded(unchecked.images, excluded_test_images([eval_set]))
    assert "evaluation (test) images" in str(err.value)


def test_duplicates_and_unreadable_files_and_bad_folders(tmp_path):
    from engine.pseudo_pool import assemble_pool

    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / ".hidden").mkdir()
    img = np.full((32, 32, 3), 120, np.uint8)
    cv2.imwrite(str(a / "one.png"), img)
    cv2.imwrite(str(a / "sub" / "same_bytes.png"), img)  # identical content: a duplicate
    cv2.imwrite(str(a / ".hidden" / "x.png"), img + 1)
    (a / "broken.png").write_bytes(b"not a png")
    pool = assemble_pool([a, a / "sub"])  # the nested folder adds nothing new
    assert [p.name for p in pool.images] == ["one.png"]
    assert pool.duplicates == 2 and list(pool.unreadable) == [str((a / "broken.png").resolve())]
    assert pool.keys == ["a/one.png"] and list(pool.group_roots) == ["a"]
    assert pool.empty_folders == [str((a / "sub").resolve())]  # nothing new in it: no group to score
    with pytest.raises(DefectScopeError, match="pool folder does not exist"):
        assemble_pool([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectScopeError, match="no usable images"):
        assemble_pool([tmp_path / "empty"])


# ---------------------------------------------------------------------------------------------------------------
# The job end to end, through the CLI


@pytest.fixture(scope="module")
def pseudo_run(tmp_path_factory: pytest.TempPathFactory, eval_set: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """`defectscope pseudo-boxes` on the generated surfaces (mutual scoring), a renamed evaluation image inside."""
    from app.cli import main

    base = tmp_path_factory.mktemp("pseudo")
    pool_dir = base / "surfaces"
    truth = _surfaces(pool_dir)
    shutil.copy(_test_images(eval_set)[0], pool_dir / "zz_renamed_eval_image.png")
    out = base / "out"
    code = main(["pseudo-boxes", "--pool", str(pool_dir), "--out", str(out), "--exclude", str(eval_set),
                 "--scorer", "mutual", "--device", "cpu"])
    assert code == 0
    return out, pool_dir, truth


def test_the_job_writes_the_run_folder_the_pretraining_stages_read(pseudo_run, eval_set):
    from engine.detections import read_detections
    from engine.pseudo_pool_format import CLASS_NAME, MAP_SIZE, read_pool

    out, _, truth = pseudo_run
    raw = json.loads((out / "pool.json").read_text())
    pool = read_pool(out)
    assert [p.name for p in pool.images] == sorted(truth)  # the renamed evaluation image is not there
    assert pool.groups == ["surfaces"] * N_SURFACES and pool.scorer == "mutual"
    assert raw["excluded"] == {"count": 1, "sources": [str(eval_set.resolve())],
                               "test_images": len(_test_images(eval_set))}
    assert raw["map_size"] == MAP_SIZE and raw["margin"] == 0.1 and raw["seconds"] > 0
    maps = np.load(out / "maps.npy")
    assert maps.dtype == np.float16 and maps.shape == (N_SURFACES, MAP_SIZE, MAP_SIZE)
    assert pool.maps.dtype == np.float32 and pool.maps.min() >= 0.0 and pool.maps.max() <= 1.0
    # the maps are the thresholded ones: an image with a defect peaks higher than a clean one, on one scale
    peaks = pool.maps.reshape(N_SURFACES, -1).max(axis=1)
    defective = np.array([len(truth[p.name]) > 0 for p in pool.images])
    assert peaks[defective].min() > peaks[~defective].max()

    dets = read_detections(out)
    assert dets.classes == [CLASS_NAME] and dets.threshold == pytest.approx(pool.threshold)
    assert sum(len(it.boxes) for it in dets.items.values()) == raw["n_boxes"] > 0
    assert all((it.scores >= dets.threshold).all() for it in dets.items.values())


def test_the_coco_set_is_what_the_detection_loader_trains_on(pseudo_run):
    from engine.datasets.detection import load_detection_set
    from engine.pseudo_pool_format import COCO_DIR, coco_split, read_pool

    out, _, _ = pseudo_run
    pool = read_pool(out)
    data = load_detection_set(out / COCO_DIR)
    assert data.classes == ["anomaly"] and not data.issues
    by_path = {s.image_path: s for s in data.samples}
    assert set(by_path) == set(pool.images)  # every pool image, absolute file names resolved as they are
    assert data.n_boxes == pool.metadata["n_boxes"]
    assert any(len(s.boxes) == 0 for s in data.samples)  # images without a pseudo box are negatives
    assert all(s.split == coco_split(s.image_path) for s in data.samples)
    names = [f"img_{i}.png" for i in range(2000)]
    assert 0.03 < sum(coco_split(n) == "validation" for n in names) / len(names) < 0.07


def test_pseudo_boxes_find_the_painted_defects(pseudo_run):
    from engine.detections import read_detections
    from engine.metrics.detection_match import match_image

    out, _, truth = pseudo_run

    def score(iou: float) -> tuple[float, float, int]:
        found = total = hits = n_boxes = on_clean = 0
        for item in read_detections(out).items.values():
            gt = truth[Path(item.path).name]
            m = match_image(gt, ["anomaly"] * len(gt), item.boxes, item.scores, item.classes, threshold=0.0, iou=iou)
            found, total = found + int(m.found.sum()), total + len(gt)
            hits, n_boxes = hits + m.n_hits, n_boxes + len(item.boxes)
            on_clean += len(item.boxes) if not len(gt) else 0
        assert total == len(PAINTED)
        return found / total, hits / n_boxes, on_clean

    # Measured: every defect has a box on it and no clean surface has one (IoU 0.1: recall 1, precision 1)...
    recall, precision, on_clean = score(0.1)
    assert recall == 1.0 and precision == 1.0 and on_clean == 0, (recall, precision, on_clean)
    # ...but the published rule boxes the whole region above the pool threshold, which the features' receptive
    # field widens by ~15 px: the two scratches pass IoU 0.3 (0.46 and 0.38), the two small blobs (15-19 px) do
    # not (0.11-0.13). Measured recall 0.5 at IoU 0.3.
    recall, precision, _ = score(0.3)
    assert recall >= 0.5 and precision >= 0.5, (recall, precision)


def test_read_pool_names_the_file_and_field_at_fault(pseudo_run, tmp_path):
    from engine.pseudo_pool_format import read_pool

    out, _, _ = pseudo_run
    broken = tmp_path / "run"
    shutil.copytree(out, broken)
    raw = json.loads((broken / "pool.json").read_text())
    (broken / "pool.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "groups"}))
    with pytest.raises(DefectScopeError, match=r"pool\.json: field 'groups' is missing"):
        read_pool(broken)
    (broken / "pool.json").write_text(json.dumps(raw))
    np.save(broken / "maps.npy", np.zeros((3, 64, 64), np.float16))
    with pytest.raises(DefectScopeError, match=r"maps\.npy: shape \[3, 64, 64\], expected \[12, 64, 64\]"):
        read_pool(broken)
    with pytest.raises(DefectScopeError, match="not a pseudo-box run folder"):
        read_pool(tmp_path / "empty")


def test_cli_refuses_bad_input_with_one_line_and_exit_2(tmp_path, capsys):
    from app.cli import main

    assert main(["pseudo-boxes", "--pool", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "pool folder does not exist" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "a.png"), np.full((40, 40, 3), 90, np.uint8))
    assert main(["pseudo-boxes", "--pool", str(tmp_path / "one"), "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[pseudo-boxes]")]
    assert len(err) == 1 and "mutual scoring compares images within a pool folder" in err[0], err
    assert main(["pseudo-boxes", "--pool", str(tmp_path / "one"), "--out", str(tmp_path / "o"),
                 "--scorer", str(tmp_path / "one")]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["pseudo-boxes", "--pool", str(tmp_path / "one"), "--out", str(tmp_path / "o"), "--margin", "2"]) == 2
    assert "--margin (margin)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_engine_checks_every_folder_of_a_list_parameter(tmp_path):
    from engine.errors import ArtifactRefError
    from engine.server.api import Engine, OutsideDataRootsError

    root = tmp_path / "root"
    (root / "pool").mkdir(parents=True)
    eng = Engine(tmp_path / "engine", "token-0123456789abcdef", max_concurrent=0, data_roots=[root])
    try:
        with pytest.raises(OutsideDataRootsError, match=r"^params\.pool\.1: "):
            eng.submit("pseudo_boxes", {"pool": [str(root / "pool"), str(tmp_path)]})
        with pytest.raises(OutsideDataRootsError, match=r"^params\.exclude\.0: "):
            eng.submit("pseudo_boxes", {"pool": [str(root / "pool")], "exclude": [str(tmp_path)]})
        with pytest.raises(ArtifactRefError, match=r"^params\.pool\.0: .*upload reference"):
            eng.submit("pseudo_boxes", {"pool": ["upload:???"]})
        job_id = eng.submit("pseudo_boxes", {"pool": [str(root / "pool")], "scorer": "mutual"})
        stored = eng.store.get(job_id).params
        assert stored["pool"] == [str(root / "pool")] and stored["scorer"] is None
        assert stored["out"].startswith(str(tmp_path / "engine"))
    finally:
        eng.executor.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Mutual scoring


def test_ring_pairs_give_every_image_exactly_r_references_within_its_group():
    from trainers.agssp.mutual import ring_pairs

    rng = np.random.default_rng(0)
    members = list(range(10, 60))
    pairs = ring_pairs(members, 8, rng)
    assert len({frozenset(p) for p in pairs}) == len(pairs) == 50 * 8 // 2  # each pair once, read both ways
    partners = {m: 0 for m in members}
    for a, b in pairs:
        assert a != b and a in partners and b in partners
        partners[a] += 1
        partners[b] += 1
    assert set(partners.values()) == {8}
    small = ring_pairs([1, 2, 3, 4], 8, rng)  # a small group: every other image
    assert sorted(small) == [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]


def test_mutual_patch_scores_equal_a_brute_force_computation_on_images_of_different_sizes(tmp_path):
    """Images of several shapes share one padded feature tensor; the padding must never be a nearest patch."""
    import torch

    from trainers.agssp.mutual import MutualConfig, _extract, mutual_maps

    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(96, 96), (64, 160), (128, 80), (96, 96), (100, 120)]):
        img = cv2.GaussianBlur(rng.uniform(60, 190, (h, w, 3)).astype(np.float32), (0, 0), 2).astype(np.uint8)
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    cfg = MutualConfig(references=8, keep_fraction=0.5, device="cpu")
    maps, errors, stats = mutual_maps(paths, ["g"] * len(paths), cfg)
    assert not errors and stats["references"] == {"asked": 8, "min": 4, "max": 4}
    fx, _ = _extract(paths, cfg, torch.device("cpu"), lambda _f, _m: None)
    assert len({g for g in fx.grids}) > 1  # really several shapes, so padding is in play
    feats = [fx.feats[i, : gh * gw].float().numpy() for i, (gh, gw) in enumerate(fx.grids)]
    for i, fi in enumerate(feats):
        per_ref = [np.sqrt(np.clip(2 - 2 * (fi @ fj.T).max(axis=1), 0, None)) for j, fj in enumerate(feats) if j != i]
        expected = np.sort(np.stack(per_ref), axis=0)[:2].mean(axis=0)  # keep round(0.5 * 4) = 2 nearest
        assert maps[i].values.shape == fx.grids[i]
        np.testing.assert_allclose(maps[i].values.ravel(), expected, atol=2e-3)
