"""Depth maps as real sensors deliver them (issue 21): the depth kind detected from real files (8-bit normalised
without background, 16-bit metric with a zero background, float TIFF, the shared MulSen-AD subset), geometry
images invariant to a per-image offset and scale, the 3D dock's relief, and an RGB + 3D model trained on depth
maps of both kinds: the detection and the fusion weights written into the model and used by every scorer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from engine.datasets.depth_kind import DepthKind, detect_depth_kind, detect_files
from engine.datasets.pointcloud import (
    PointCloudError,
    display_cloud,
    read_depth,
    read_depth_array,
    valid_points,
)
from engine.geometry.depth_image import geometry_image, geometry_image_file

SHARED = Path("/work/shared/data/mulsen_ad_subset")


def _relief(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth part surface with a little sensor noise (float, arbitrary units)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    z = 10 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (0.1 * h * w)) + 0.02 * xx
    return (z + rng.normal(0, 0.05, z.shape)).astype(np.float32)


def _write_8bit_normalised(path: Path, z: np.ndarray) -> None:
    """As MulSen-AD's processed depth: stretched into a band of 8-bit values, no zero background."""
    lo, hi = z.min(), z.max()
    cv2.imwrite(str(path), np.round(130 + 120 * (z - lo) / (hi - lo)).astype(np.uint8))


def _write_16bit_metric(path: Path, z: np.ndarray, part: np.ndarray) -> None:
    """As a structured-light sensor: 16-bit PNG in 0.1 mm, distance from the sensor, 0 where nothing came back."""
    depth = np.round((300.0 - z) * 10).astype(np.uint16)
    depth[~part] = 0
    cv2.imwrite(str(path), depth)


def test_the_depth_kind_is_detected_from_real_files_of_both_kinds(tmp_path: Path) -> None:
    z = _relief()
    part = np.zeros(z.shape, bool)
    part[16:80, 20:76] = True
    _write_8bit_normalised(tmp_path / "n8.png", z)
    _write_16bit_metric(tmp_path / "m16.png", z, part)
    stretched = np.round((z - z.min()) / np.ptp(z) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "n16.png"), stretched)
    metric_f = np.where(part, 300.0 - z, np.nan).astype(np.float32)
    tifffile.imwrite(tmp_path / "mf.tiff", metric_f)
    # the low end of a surface that happens to reach 0 (a handful of pixels) is not a background
    low = np.round(28 * (z - z.min()) / np.ptp(z)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "low8.png"), low)
    # an 8-bit map with a zero background: the part stretched to 1..255, the rest 0
    bg8 = np.where(part, np.round(1 + 254 * (z - z.min()) / np.ptp(z)), 0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "bg8.png"), bg8)

    def kind(name: str) -> tuple[str, str, str]:
        k = detect_depth_kind(read_depth_array(tmp_path / name))
        return k.dtype, k.background, k.scale

    assert kind("n8.png") == ("uint8", "none", "normalised")
    assert kind("m16.png") == ("uint16", "zero", "metric")
    assert kind("n16.png") == ("uint16", "none", "normalised")
    assert kind("mf.tiff") == ("float32", "zero", "metric")
    assert kind("low8.png") == ("uint8", "none", "normalised")
    assert kind("bg8.png") == ("uint8", "zero", "normalised")
    # what the job log and multimodal.json say
    text = detect_depth_kind(read_depth_array(tmp_path / "m16.png")).describe()
    assert text.startswith("16-bit depth, zero = no measurement, metric")
    # zeros are "no point" only where 0 is a background
    assert valid_points(read_depth(tmp_path / "m16.png")).sum() == part.sum()
    assert valid_points(read_depth(tmp_path / "low8.png")).mean() > 0.99
    # a dataset's kind is the majority of a spread sample, with the odd ones counted
    many = [tmp_path / "n8.png"] * 5 + [tmp_path / "bg8.png"]
    k = detect_files(many)
    assert (k.background, k.files, k.disagreeing) == ("none", 6, 1)
    assert DepthKind.from_dict(k.to_dict()) == k


def test_bad_depth_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    rgb = tmp_path / "colour.png"
    cv2.imwrite(str(rgb), np.zeros((8, 8, 3), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    for path, reason in ((rgb, "single-channel"), (broken, "cannot read depth map"),
                         (tmp_path / "gone.png", "not found")):
        with pytest.raises(PointCloudError, match=reason) as info:
            read_depth_array(path)
        assert str(info.value).startswith(str(path))
    zeros = tmp_path / "zeros.png"
    cv2.imwrite(str(zeros), np.zeros((8, 8), np.uint16))
    with pytest.raises(PointCloudError, match="no measured point"):
        read_depth(zeros)
    # a model trained on 8-bit maps refuses a 16-bit one, naming it
    m16 = tmp_path / "m16.png"
    cv2.imwrite(str(m16), np.full((16, 16), 3000, np.uint16))
    with pytest.raises(PointCloudError, match="16-bit depth map, but the model was trained on 8-bit") as info:
        geometry_image_file(m16, 64, DepthKind("uint8", "none", "normalised"))
    assert str(info.value).startswith(str(m16))


def test_geometry_images_ignore_a_per_image_depth_offset_and_scale() -> None:
    z = _relief(128, 128)
    measured = np.ones(z.shape, bool)
    normalised = DepthKind("float32", "none", "normalised")
    a, _, _ = geometry_image(z, measured, 128, normalised)
    b, _, _ = geometry_image(3.7 * z + 250.0, measured, 128, normalised)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # rounding only
    assert a.std() > 5  # not a blank image
    # a metric kind keeps the dataset's scale: the offset goes, a deeper part looks deeper
    metric = DepthKind("float32", "none", "metric")
    _, _, own = geometry_image(z, measured, 128, metric)
    c, _, _ = geometry_image(z + 40.0, measured, 128, metric, own)
    d, _, _ = geometry_image(3.0 * z, measured, 128, metric, own)
    assert np.abs(c.astype(int) - a.astype(int)).max() <= 1
    assert np.abs(d.astype(int) - a.astype(int)).mean() > 5
    # unmeasured pixels are drawn as far and flat; the part keeps its relief
    part = np.zeros(z.shape, bool)
    part[20:100, 30:110] = True
    e, mg, _ = geometry_image(z, part, 128, DepthKind("float32", "zero", "normalised"))
    assert (e[~mg] == (255, 128, 0)).all() and e[mg][:, 0].std() > 5


def test_the_3d_dock_shows_a_depth_map_as_relief_without_a_background_plane(tmp_path: Path) -> None:
    z = _relief()
    part = np.zeros(z.shape, bool)
    part[16:80, 20:76] = True
    _write_16bit_metric(tmp_path / "m16.png", z, part)
    _write_8bit_normalised(tmp_path / "n8.png", z)
    cloud, about = display_cloud(tmp_path / "m16.png")
    assert np.array_equal(valid_points(cloud), part)  # the zero background is not drawn as a plane
    assert "zero = no measurement" in about
    cloud, about = display_cloud(tmp_path / "n8.png")
    v = valid_points(cloud)
    assert v.all() and "normalised per image" in about
    relief = np.percentile(cloud[..., 2][v], 99) - np.percentile(cloud[..., 2][v], 1)
    assert 0.1 * 96 < relief < 0.3 * 96  # the depth range spans a fifth of the side, whatever its unit


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is not on this machine (the shared data set)")
def test_the_real_subset_is_detected_as_8_bit_normalised_without_background() -> None:
    for cat in ("button_cell", "cotton"):
        files = sorted((SHARED / cat / "train" / "good" / "depth").glob("*.png"))
        k = detect_files(files, limit=12)
        assert (k.dtype, k.background, k.scale) == ("uint8", "none", "normalised"), (cat, k)
        cloud, _ = display_cloud(files[0])
        assert valid_points(cloud).mean() > 0.99  # every pixel is a reading: none hidden as background


# --------------------------------------------------------------------------------------------- training
def _depth_set(src: Path, dst: Path, kind: str) -> Path:
    """The generated dome (xyz TIFFs) as a depth-map data set: 16-bit metric with a zero background, or 8-bit
    normalised per image with none (the background filled with the plate's depth, as a renderer would)."""
    from engine.datasets.pointcloud import read_xyz

    for split_dir in sorted((src / "dome").glob("*/*")):
        rel = split_dir.relative_to(src / "dome")
        out = dst / "dome" / rel
        shutil.copytree(split_dir / "rgb", out / "rgb")
        if (split_dir / "gt").is_dir():
            shutil.copytree(split_dir / "gt", out / "gt")
        (out / "depth").mkdir()
        for f in sorted((split_dir / "xyz").glob("*.tiff")):
            z = read_xyz(f)[..., 2]
            measured = z != 0
            if kind == "metric16":
                depth = np.where(measured, np.round(z * 10), 0).astype(np.uint16)
            else:
                filled = np.where(measured, z, np.median(z[measured]))
                lo, hi = filled.min(), filled.max()
                depth = np.round(120 + 130 * (filled - lo) / (hi - lo)).astype(np.uint8)
            cv2.imwrite(str(out / "depth" / f"{f.stem}.png"), depth)
    return dst


@pytest.fixture(scope="module")
def depth_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("torch", reason="training needs torch (the 'train' extra)")
    from engine.datasets.demo3d import generate_demo3d

    src = generate_demo3d(tmp_path_factory.mktemp("d3") / "demo3d", categories=("dome",), size=96, n_train=8,
                          n_validation=3, n_test_good=3, n_test_defect=2)
    root = tmp_path_factory.mktemp("depth")
    return {k: _depth_set(src, root / k, k) for k in ("metric16", "normalised8")}


def _train(data: Path, out: Path, **extra: object) -> dict:
    from engine.jobs import run_job

    messages: list[str] = []
    result = run_job("train_multimodal", {"data": str(data), "category": "dome", "out": str(out), "image_size": 64,
                                          "geo_grid": 64, "distill_epochs": 3, **extra},
                     lambda _f, m: messages.append(m))
    result["messages"] = messages
    return result


def test_a_model_trained_on_depth_maps_records_their_kind_and_its_fusion_weights(depth_sets: dict[str, Path],
                                                                                 tmp_path: Path, monkeypatch) -> None:
    import sys

    from engine.jobs import run_job
    from engine.runtime import multimodal as mm

    expected = {"metric16": ("uint16", "zero", "metric"), "normalised8": ("uint8", "none", "normalised")}
    for name, data in depth_sets.items():
        out = tmp_path / name
        result = _train(data, out)
        meta = json.loads((out / mm.METADATA_FILE).read_text())
        kind = meta["depth"]["kind"]
        assert meta["geo_features"] == "depth_image"
        assert (kind["dtype"], kind["background"], kind["scale"]) == expected[name]
        assert (meta["depth"]["scales"] is None) == (name == "normalised8")  # a metric kind keeps one scale
        assert result["depth_kind"] == kind["description"]
        assert any(m == f"3D input: {kind['description']}" for m in result["messages"])  # said in the job log
        fusion = meta["fusion"]
        assert fusion["rule"] == "held-out good parts" and fusion["n_parts"] == 3
        assert set(fusion["weights"]) == set(mm.SOURCES) and all(0 <= v <= 1 for v in fusion["weights"].values())
        assert result["fusion_weights"] == fusion["weights"]
        ev = fusion["evidence"]
        assert ev["geo"]["headroom"] == pytest.approx(
            (ev["geo"]["unfamiliar"] - ev["geo"]["good_mean"]) / ev["geo"]["good_std"], rel=1e-2)

    # the weights in the model are what every scorer uses: the score_dataset job (GUI, CLI) equals predict
    model_dir = tmp_path / "metric16"
    model = mm.MultimodalModel(model_dir)
    part = depth_sets["metric16"] / "dome" / "test" / "dent"
    pred = model.predict(part / "rgb" / "000.png", part / "depth" / "000.png")
    w = model.mode_weights("both")
    assert pred.anomaly_map == pytest.approx(w["rgb"] * pred.maps["rgb"] + w["geo"] * pred.maps["geo"], abs=1e-5)
    monkeypatch.setitem(sys.modules, "open3d", None)  # depth maps need no open3d: both sensors still score
    out = tmp_path / "pred"
    job = run_job("score_dataset", {"model": str(model_dir), "data": str(depth_sets["metric16"]), "category": "dome",
                                    "out": str(out), "splits": ["test"], "device": "cpu"})
    summary = json.loads((out / "scores.json").read_text())
    assert job["n_errors"] == 0 and summary["notes"] == []
    item = next(v for k, v in summary["items"].items() if k.endswith("dent/rgb/000.png"))
    assert item["score"] == pytest.approx(pred.score, abs=1e-5)
    # a depth map of another bit depth than the model's is refused, naming the file
    with pytest.raises(PointCloudError, match="8-bit depth map, but the model was trained on 16-bit"):
        model.predict(part / "rgb" / "000.png", depth_sets["normalised8"] / "dome" / "test" / "dent" / "depth" /
                      "000.png")
    # the workbench's Models panel shows what the model detected and the weights it fuses with
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from app.gui.models_panel import describe_metadata

    text = describe_metadata(json.loads((model_dir / mm.METADATA_FILE).read_text()))
    assert "3D input: 16-bit depth, zero = no measurement, metric" in text
    w = json.loads((model_dir / mm.METADATA_FILE).read_text())["fusion"]["weights"]
    assert f"fusion weights: RGB {w['rgb']:.2f}, 3D {w['geo']:.2f}" in text and "(held-out good parts)" in text


def test_fusion_weights_can_be_fixed_by_hand(depth_sets: dict[str, Path], tmp_path: Path) -> None:
    from engine.errors import DefectScopeError
    from engine.runtime import multimodal as mm

    out = tmp_path / "hand"
    _train(depth_sets["normalised8"], out, rgb_weight=1.0, geo_weight=0.0)
    meta = json.loads((out / mm.METADATA_FILE).read_text())
    assert meta["fusion"]["rule"] == "fixed by hand"
    assert meta["fusion"]["weights"] == {"rgb": 1.0, "rgb_pred": 1.0, "geo": 0.0, "geo_pred": 0.0}
    model = mm.MultimodalModel(out)
    part = depth_sets["normalised8"] / "dome" / "test" / "dent"
    both = model.predict(part / "rgb" / "000.png", part / "depth" / "000.png")
    rgb = model.predict(part / "rgb" / "000.png", part / "depth" / "000.png", mode="rgb_only")
    assert both.score == pytest.approx(rgb.score, abs=1e-6)  # a 3D weight of 0 leaves the RGB verdict alone
    with pytest.raises(DefectScopeError, match="cannot both be 0"):
        _train(depth_sets["normalised8"], tmp_path / "none", rgb_weight=0.0, geo_weight=0.0)
