"""Organised point clouds: reading and checking xyz / depth files, the generated RGB + 3D demo set, and the
open3d preprocessing (background plane, largest cluster, model grid, cache beside the run)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from engine.datasets import load_dataset
from engine.datasets.demo3d import CATEGORIES, DEFECTS, generate_demo3d, render
from engine.datasets.pointcloud import PointCloudError, read_depth, read_xyz, valid_points, write_xyz


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo3d(tmp_path_factory.mktemp("d3") / "demo3d", n_train=4, n_validation=2, n_test_good=2,
                           n_test_defect=2)


def test_bad_point_cloud_files_are_clear_per_file_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(b"II*\x00" + b"\x17" * 64)
    flat = tmp_path / "flat.tiff"
    tifffile.imwrite(flat, np.ones((8, 8), np.float32))
    ints = tmp_path / "ints.tiff"
    tifffile.imwrite(ints, np.ones((8, 8, 3), np.uint16), photometric="minisblack")
    zeros = tmp_path / "zeros.tiff"
    tifffile.imwrite(zeros, np.zeros((8, 8, 3), np.float32), photometric="minisblack")
    cases = {corrupt: "cannot read TIFF", flat: "H x W x 3", ints: "float", zeros: "no measured point",
             tmp_path / "missing.tiff": "not found"}
    for path, reason in cases.items():
        with pytest.raises(PointCloudError, match=reason) as info:
            read_xyz(path)
        assert str(info.value).startswith(str(path))


def test_xyz_round_trip_and_depth_maps(tmp_path: Path) -> None:
    xyz = np.random.default_rng(0).normal(size=(6, 7, 3)).astype(np.float32)
    xyz[0, 0] = np.nan  # not measured, as some scanners write it
    write_xyz(tmp_path / "a.tiff", xyz)
    back = read_xyz(tmp_path / "a.tiff")
    assert back.shape == (6, 7, 3) and back.dtype == np.float32
    assert not valid_points(back)[0, 0] and np.allclose(back[1:], xyz[1:])
    depth = np.zeros((5, 4), np.uint16)
    depth[2, 3] = 1000
    import cv2

    cv2.imwrite(str(tmp_path / "d.png"), depth)
    cloud = read_depth(tmp_path / "d.png", scale=0.001)
    assert cloud.shape == (5, 4, 3) and valid_points(cloud).sum() == 1
    assert np.allclose(cloud[2, 3], [3.0, 2.0, 1.0])
    cv2.imwrite(str(tmp_path / "z.png"), np.zeros((5, 4), np.uint16))
    with pytest.raises(PointCloudError, match="no measured point"):
        read_depth(tmp_path / "z.png")


def test_generated_set_has_the_mvtec3d_layout_and_both_kinds_of_defect(demo3d: Path) -> None:
    for cat in CATEGORIES:
        ds = load_dataset(demo3d / cat)
        assert ds.format == "mvtec3d"
        defective = [s for s in ds.samples if s.label == "defective"]
        assert {s.defect_type for s in defective} == set(DEFECTS)
        for s in defective:
            import cv2

            mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE) > 0
            assert mask.any(), s.mask_path
            xyz = read_xyz(s.extra["xyz_path"])
            assert xyz.shape[:2] == mask.shape and valid_points(xyz).mean() > 0.95


def test_geometric_defects_barely_show_in_colour_and_stains_not_in_3d() -> None:
    size = 96
    for name, in_rgb, in_3d in (("dent", False, True), ("bump", False, True), ("stain", True, False)):
        scene = CATEGORIES["dome"](np.random.default_rng(1), size)
        clean_h, clean_a = scene.height.copy(), scene.albedo.copy()
        mask = DEFECTS[name](scene, np.random.default_rng(2))
        assert mask.any()
        rgb_d, xyz_d = render(scene, np.random.default_rng(3))
        scene.height, scene.albedo = clean_h, clean_a
        rgb_c, xyz_c = render(scene, np.random.default_rng(3))
        # mean change inside the defect, in grey levels; camera noise alone is ~2.5
        rgb_diff = np.abs(rgb_d.astype(int) - rgb_c.astype(int)).max(-1)[mask].mean()
        z_diff = np.abs(xyz_d[..., 2] - xyz_c[..., 2])[mask].max()
        assert (rgb_diff > 15) == in_rgb and rgb_diff < 500, (name, rgb_diff)
        assert (z_diff > 0.3) == in_3d, (name, z_diff)


def test_preprocessing_keeps_the_part_drops_background_and_strays_and_caches(demo3d: Path, tmp_path: Path) -> None:
    pytest.importorskip("open3d", reason="the '3d' extra (open3d) is not installed")
    from engine.geometry.preprocess import PrepConfig, foreground_mask, prepare_file

    src = demo3d / "dome" / "test" / "dent" / "xyz" / "000.tiff"
    xyz = read_xyz(src)
    h, w = xyz.shape[:2]
    # a stray speck floating above the part: not the largest cluster
    xyz[2:5, 2:5, 2] -= 30.0
    fg, plane = foreground_mask(xyz)
    assert plane is not None
    z = xyz[..., 2]
    rim = valid_points(xyz) & (z > np.median(z[valid_points(xyz)]) - 0.05)  # on or near the background plane
    assert not fg[2:5, 2:5].any()  # the speck is gone
    assert fg[h // 2, w // 2]  # the part's centre is kept
    assert (fg & rim).sum() < 0.02 * fg.sum()
    assert 0.2 < fg.mean() < 0.45  # the dome covers ~30% of the view

    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    cfg = PrepConfig(grid=64)
    first = prepare_file(src, cfg, cache_dir=tmp_path / "cache")
    assert first.xyz.shape == (64, 64, 3) and first.foreground.shape == (64, 64)
    assert np.array_equal(valid_points(first.xyz), first.foreground)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = prepare_file(src, cfg, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.xyz, first.xyz)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the user's file is only read
    # a surface filling the view keeps its points (its border ring is the part, not a background)
    tile = read_xyz(demo3d / "tile" / "train" / "good" / "xyz" / "000.tiff")
    fg_tile, _ = foreground_mask(tile)
    assert fg_tile.mean() > 0.6


def test_a_depth_map_folder_stands_in_for_xyz(demo3d: Path, tmp_path: Path) -> None:
    import cv2

    from engine.datasets.pointcloud import cloud_path, read_cloud

    cat = tmp_path / "parts"
    src = demo3d / "dome"
    for split, kind in (("train", "good"), ("test", "dent")):
        d = cat / split / kind
        shutil.copytree(src / split / kind / "rgb", d / "rgb")
        if (src / split / kind / "gt").is_dir():
            shutil.copytree(src / split / kind / "gt", d / "gt")
        (d / "depth").mkdir()
        for f in sorted((src / split / kind / "xyz").glob("*.tiff")):
            z = read_xyz(f)[..., 2]
            cv2.imwrite(str(d / "depth" / f"{f.stem}.png"), np.round(z * 100).astype(np.uint16))
    ds = load_dataset(cat)
    assert ds.format == "mvtec3d" and not [i for i in ds.issues if "xyz" in i.reason]
    s = ds.samples[0]
    path = cloud_path(s.extra)
    assert path is not None and path.parent.name == "depth"
    cloud = read_cloud(path)
    assert cloud.shape[2] == 3 and valid_points(cloud).mean() > 0.95
    xyz_file = src / "train" / "good" / "xyz" / "000.tiff"
    assert np.array_equal(read_cloud(xyz_file), read_xyz(xyz_file))
