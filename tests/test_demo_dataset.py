"""The embedded demo dataset: MVTec layout, honest masks, determinism, reuse and atomic replacement."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.datasets import DEFECTIVE, GOOD, demo, load_dataset
from engine.datasets.demo import DEMO_VERSION, ensure_demo_dataset, generate_demo_dataset
from engine.datasets.demo_parts import CATEGORIES, DEFECTS
from engine.datasets.demo_render import MAX_DEFECT_AREA, MIN_DEFECT_AREA, render_sample
from engine.datasets.imageio import read_image, read_mask
from engine.errors import DatasetError
from engine.home import default_data_home

SMALL = {"n_train": 2, "n_test_good": 1, "n_test_defect_per_type": 1, "image_size": 96, "seed": 0}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the real user data folder.
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen") / "demo"
    return generate_demo_dataset(
        root, n_train=3, n_test_good=2, n_test_defect_per_type=2, image_size=128, seed=3
    )


def test_registry_has_textures_and_objects() -> None:
    kinds = [spec.kind for spec in CATEGORIES.values()]
    assert kinds.count("texture") >= 2 and kinds.count("object") >= 2
    assert {spec.channels for spec in CATEGORIES.values()} == {1, 3}
    for spec in CATEGORIES.values():
        assert 2 <= len(spec.defects) <= 4
        assert set(spec.defects) <= set(DEFECTS)


def test_layout_counts_and_sizes(small_demo: Path) -> None:
    root = small_demo
    manifest = json.loads((root / "demo.json").read_text())
    assert manifest["version"] == DEMO_VERSION and manifest["seed"] == 3
    assert list(manifest["categories"]) == list(CATEGORIES)
    assert "synthetic" in (root / "README.txt").read_text().lower()
    # Category folders sit directly under ROOT; nothing else but the two text files.
    assert sorted(p.name for p in root.iterdir()) == sorted([*CATEGORIES, "README.txt", "demo.json"])
    for name, spec in CATEGORIES.items():
        cat = root / name
        assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
        assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(["good", *spec.defects])
        assert sorted(p.name for p in (cat / "test" / "good").iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(spec.defects)
        for img_path in (cat / "train" / "good").iterdir():
            img = _read(img_path)
            assert img.shape[:2] == (128, 128) and img.dtype == np.uint8
            assert img.ndim == (2 if spec.channels == 1 else 3)
        for defect in spec.defects:
            images = sorted((cat / "test" / defect).iterdir())
            assert [p.name for p in images] == ["000.png", "001.png"]
            for img_path in images:
                mask = _read(cat / "ground_truth" / defect / f"{img_path.stem}_mask.png")
                assert mask.ndim == 2 and mask.dtype == np.uint8 and mask.shape == (128, 128)
                assert set(np.unique(mask)) == {0, 255}
                area = np.count_nonzero(mask) / mask.size
                assert MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA, (name, defect, area)


def test_every_category_loads_through_the_mvtec_reader(small_demo: Path) -> None:
    ds = load_dataset(small_demo)
    assert ds.format == "mvtec" and ds.issues == []
    assert sorted(ds.categories) == sorted(CATEGORIES)
    for name, spec in CATEGORIES.items():
        samples = [s for s in ds.samples if s.category == name]
        assert sum(s.split == "train" and s.label == GOOD for s in samples) == 3
        assert sum(s.split == "test" and s.label == GOOD for s in samples) == 2
        defects = [s for s in samples if s.label == DEFECTIVE]
        assert len(defects) == 2 * len(spec.defects)
        for s in defects:
            img = read_image(s.image_path)
            assert read_mask(s.mask_path, img.shape[:2]).any()  # same size, or read_mask raises


def test_written_files_are_what_render_sample_returns(small_demo: Path) -> None:
    for name, spec in CATEGORIES.items():
        defect = next(iter(spec.defects))
        smp = render_sample(name, split="test", defect=defect, index=1, image_size=128, seed=3)
        img = _read(small_demo / name / "test" / defect / "001.png")
        rgb = img if img.ndim == 2 else img[..., ::-1]
        assert np.array_equal(rgb, smp.image)
        assert np.array_equal(_read(small_demo / name / "ground_truth" / defect / "001_mask.png"), smp.mask)


@pytest.mark.parametrize("name", list(CATEGORIES))
def test_mask_is_exactly_where_the_defect_changed_pixels(name: str) -> None:
    spec = CATEGORIES[name]
    for defect in spec.defects:
        for index in range(3):
            smp = render_sample(name, defect=defect, index=index)
            mask = smp.mask > 0
            area = mask.mean()
            assert MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA, (defect, index, area)
            changed = np.abs(smp.image.astype(np.int16) - smp.clean.astype(np.int16))
            changed = changed.max(axis=2) if changed.ndim == 3 else changed
            # Nothing outside the mask changed, and the mask is not padded with untouched pixels.
            assert not changed[~mask].any(), (defect, index)
            assert (changed[mask] > 0).mean() > 0.5, (defect, index)
            # The defect is visible: a clear mean change inside its footprint.
            assert changed[mask].mean() > 6, (defect, index, changed[mask].mean())
            if spec.kind == "object":
                assert mask[smp.coverage].sum() == mask.sum(), "defect off the object"


def test_good_images_vary_naturally() -> None:
    for name in CATEGORIES:
        a = render_sample(name, split="train", index=0).image.astype(np.float32)
        b = render_sample(name, split="train", index=1).image.astype(np.float32)
        assert np.abs(a - b).mean() > 3, name
        assert render_sample(name, split="train", index=0).mask.max() == 0


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kw = {"categories": ["brushed_metal", "washer"], **SMALL}
    a = _all_files(generate_demo_dataset(tmp_path / "a", **kw))
    b = _all_files(generate_demo_dataset(tmp_path / "b", **kw))
    assert a == b
    c = _all_files(generate_demo_dataset(tmp_path / "c", **{**kw, "seed": 1}))
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png") and "ground_truth" not in k]
    assert all(a[k] != c[k] for k in pngs)


def test_regenerating_replaces_an_earlier_demo(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", categories=["pill"], **SMALL)
    generate_demo_dataset(root, categories=["wood"], **SMALL)
    assert not (root / "pill").exists() and (root / "wood" / "train" / "good" / "000.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp or old folders left behind


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    mine = tmp_path / "my_data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError):
        generate_demo_dataset(mine, categories=["pill"], **SMALL)
    assert (mine / "precious.txt").read_text() == "keep me"


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError):
        generate_demo_dataset(Path("/nonexistent/x"), categories=["unicorn"])
    with pytest.raises(DatasetError):
        render_sample("pill", defect="dent")


def test_ensure_reuses_current_copy_and_regenerates_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo, "DEFAULT_CONFIG", dict(SMALL))
    root = ensure_demo_dataset()
    assert root == (tmp_path / "home" / "demo").absolute()
    manifest_path = root / "demo.json"
    stamp = manifest_path.stat().st_mtime_ns

    calls: list[Path] = []
    real_generate = demo._generate

    def counting(target: Path, *args: object, **kwargs: object) -> Path:
        calls.append(target)
        return real_generate(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(demo, "_generate", counting)
    assert ensure_demo_dataset() == root
    assert calls == [] and manifest_path.stat().st_mtime_ns == stamp

    stale = json.loads(manifest_path.read_text())
    stale["version"] = DEMO_VERSION - 1
    manifest_path.write_text(json.dumps(stale))
    assert ensure_demo_dataset() == root
    assert len(calls) == 1
    assert json.loads(manifest_path.read_text())["version"] == DEMO_VERSION

    # An explicit root works too, and is reused the same way.
    other = ensure_demo_dataset(tmp_path / "elsewhere")
    assert ensure_demo_dataset(tmp_path / "elsewhere") == other and len(calls) == 2


def test_leftover_temp_folder_is_not_a_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "DEFAULT_CONFIG", dict(SMALL))
    home = tmp_path / "home"
    # What a killed run leaves behind: a hidden partial folder with images but no demo.json.
    partial = home / ".demo.partial-99999-deadbeef"
    (partial / "pill" / "train" / "good").mkdir(parents=True)
    (partial / "pill" / "train" / "good" / "000.png").write_bytes(b"junk")
    long_ago = os.path.getmtime(partial) - 7200
    os.utime(partial, (long_ago, long_ago))
    root = ensure_demo_dataset()
    assert (root / "demo.json").is_file()
    assert not partial.exists()  # stale leftovers are swept


def test_interrupted_run_leaves_previous_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "demo", categories=["wood"], **SMALL)
    before = _all_files(root)
    n = 0
    real_write = demo._write_png

    def failing_write(path: Path, img: np.ndarray) -> None:
        nonlocal n
        n += 1
        if n == 5:
            raise KeyboardInterrupt
        real_write(path, img)

    monkeypatch.setattr(demo, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(root, categories=["pill"], **SMALL)
    assert _all_files(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]

    n = 0
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(fresh, categories=["pill"], **SMALL)
    assert not fresh.exists()


def test_default_data_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_home() == tmp_path / "home"
    monkeypatch.delenv("DEFECTSCOPE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_home() == tmp_path / "xdg" / "defectscope"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_home() == tmp_path / "user" / ".local" / "share" / "defectscope"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_data_home() == tmp_path / "user" / "Library" / "Application Support" / "DefectScope"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_data_home() == tmp_path / "local" / "DefectScope"


SMALL_3D = {"size": 64, "n_train": 1, "n_validation": 1, "n_test_good": 1, "n_test_defect": 1}


def test_demo3d_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    """demo3d used to rename a user's folder aside and delete it; it now has the same guard as the 2D demo."""
    from engine.datasets.demo3d import MANIFEST_NAME, generate_demo3d

    mine = tmp_path / "my_scans"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="my_scans"):
        generate_demo3d(mine, categories=("tile",), **SMALL_3D)
    assert (mine / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["my_scans"]  # no staging folder left behind

    # An earlier 3D demo (its manifest is there) is replaced, and nothing is left beside it.
    root = generate_demo3d(tmp_path / "d3", categories=("tile",), **SMALL_3D)
    generate_demo3d(root, categories=("dome",), **SMALL_3D)
    assert (root / MANIFEST_NAME).is_file() and (root / "dome").is_dir() and not (root / "tile").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d3", "my_scans"]


# sha256 of every category's good and defect renders (96 px, seed 5, index 2), as generated before the demo
# generator was split into demo_parts / demo_defects / demo_surfaces / demo_render. Benchmarks and tests rely
# on the demo's pixels: a change here must come with a DEMO_VERSION bump and this digest updated on purpose.
GOLDEN_RENDER_DIGEST = "620678d4ac4ad254f4fb10fc6a3929e04f62c87dbaee5175685f9315feaf4ac7"


def test_rendered_pixels_are_unchanged() -> None:
    import hashlib

    digest = hashlib.sha256()
    for name, spec in CATEGORIES.items():
        for defect in [None, *spec.defects]:
            smp = render_sample(name, split="test", defect=defect, index=2, image_size=96, seed=5)
            digest.update(smp.image.tobytes())
            digest.update(smp.mask.tobytes())
    assert DEMO_VERSION == 2
    assert digest.hexdigest() == GOLDEN_RENDER_DIGEST
