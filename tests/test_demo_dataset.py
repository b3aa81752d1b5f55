"""The embedded demo dataset: layout the MVTec reader loads, exact masks, determinism, atomic and safe writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.datasets import DEFECTIVE, GOOD, load_dataset
from engine.datasets import demo as demo_mod
from engine.datasets.demo import (
    CATEGORIES,
    DEMO_VERSION,
    default_data_home,
    ensure_demo_dataset,
    generate_demo_dataset,
    render_sample,
)
from engine.datasets.imageio import read_image, read_mask
from engine.errors import DatasetError

SMALL = {"n_train": 3, "n_test_good": 2, "n_test_defect_per_type": 2, "image_size": 128}


def test_every_category_loads_through_the_mvtec_reader(tmp_path):
    root = generate_demo_dataset(tmp_path / "demo", **SMALL)
    assert len(CATEGORIES) >= 4
    ds = load_dataset(root)
    assert ds.format == "mvtec" and ds.issues == []
    assert sorted(ds.categories) == sorted(CATEGORIES)
    kinds = [spec.kind for spec in CATEGORIES.values()]
    assert kinds.count("texture") >= 2 and kinds.count("object") >= 2
    for name, spec in CATEGORIES.items():
        samples = [s for s in ds.samples if s.category == name]
        assert sum(s.split == "train" and s.label == GOOD for s in samples) == 3
        assert sum(s.split == "test" and s.label == GOOD for s in samples) == 2
        defects = [s for s in samples if s.label == DEFECTIVE]
        assert len(defects) == 2 * len(spec.defects) and 2 <= len(spec.defects) <= 4
        for s in defects:
            img = read_image(s.image_path)
            mask = read_mask(s.mask_path, img.shape[:2])  # same size, or read_mask raises
            frac = mask.mean()
            assert 0.0005 < frac < 0.1, (s.image_path, frac)
    manifest = json.loads((root / "demo.json").read_text())
    assert manifest["version"] == DEMO_VERSION
    assert "synthetic" in (root / "README.txt").read_text()


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_mask_is_exactly_the_pixels_the_defect_changed(category):
    for defect in CATEGORIES[category].defects:
        s = render_sample(category, split="test", defect=defect, index=0, image_size=128, seed=3)
        changed = np.any(s.image.reshape(128, 128, -1) != s.clean.reshape(128, 128, -1), axis=2)
        mask = s.mask > 0
        assert not (changed & ~mask).any(), f"{category}/{defect}: pixels changed outside the mask"
        assert changed[mask].mean() > 0.5, f"{category}/{defect}: most masked pixels must differ"


def test_good_images_vary_like_real_parts():
    a = render_sample("washer", split="train", defect=None, index=0, image_size=128, seed=0).image
    b = render_sample("washer", split="train", defect=None, index=1, image_size=128, seed=0).image
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2.0


def test_generation_is_deterministic_per_seed(tmp_path):
    one = generate_demo_dataset(tmp_path / "a", categories=["washer"], **SMALL)
    two = generate_demo_dataset(tmp_path / "b", categories=["washer"], **SMALL)
    other = generate_demo_dataset(tmp_path / "c", categories=["washer"], **SMALL, seed=5)
    files = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.png"))
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert any((one / f).read_bytes() != (other / f).read_bytes() for f in files)


def test_ensure_reuses_a_current_copy_and_regenerates_an_old_one(tmp_path, monkeypatch):
    monkeypatch.setitem(demo_mod.DEFAULT_CONFIG, "n_train", 2)
    monkeypatch.setitem(demo_mod.DEFAULT_CONFIG, "n_test_good", 1)
    monkeypatch.setitem(demo_mod.DEFAULT_CONFIG, "n_test_defect_per_type", 1)
    monkeypatch.setitem(demo_mod.DEFAULT_CONFIG, "image_size", 96)
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    assert default_data_home() == tmp_path / "home"
    root = ensure_demo_dataset()
    assert root == (tmp_path / "home" / "demo").absolute()
    marker = next(root.rglob("*.png"))
    mtime = marker.stat().st_mtime_ns
    assert ensure_demo_dataset() == root and marker.stat().st_mtime_ns == mtime  # reused, not rewritten
    manifest = json.loads((root / "demo.json").read_text())
    manifest["version"] = DEMO_VERSION - 1
    (root / "demo.json").write_text(json.dumps(manifest))
    ensure_demo_dataset()
    assert json.loads((root / "demo.json").read_text())["version"] == DEMO_VERSION


def test_a_leftover_partial_folder_is_not_a_dataset_and_user_data_is_never_overwritten(tmp_path):
    partial = tmp_path / ".demo.partial-123-abcd"
    (partial / "washer" / "train" / "good").mkdir(parents=True)
    root = generate_demo_dataset(tmp_path / "demo", categories=["washer"], **SMALL)
    assert (root / "demo.json").is_file()
    assert not list(tmp_path.glob(".demo.old-*"))
    users = tmp_path / "my_parts"
    users.mkdir()
    (users / "photo.png").write_bytes(b"precious")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_demo_dataset(users, categories=["washer"], **SMALL)
    assert (users / "photo.png").read_bytes() == b"precious"
    with pytest.raises(DatasetError, match="unknown demo categories"):
        generate_demo_dataset(tmp_path / "x", categories=["nope"], **SMALL)
