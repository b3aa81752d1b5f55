"""The readers against the real data sets in ../shared/data: the counts are those of their SOURCE.md files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from engine.datasets import DEFECTIVE, GOOD, detect_format, load_dataset
from engine.datasets.visa import VisaReader
from engine.errors import DatasetError

pytestmark = pytest.mark.shared_data


def _counts(ds) -> Counter:
    return Counter((s.split, s.label, s.defect_type) for s in ds.samples)


def test_magnetic_tile_mvtec(shared_data: Path) -> None:
    root = shared_data / "magnetic_tile" / "MT"
    assert detect_format(root) == "mvtec"
    ds = load_dataset(root)
    assert ds.categories == ["MT"]
    assert ds.issues == []
    c = _counts(ds)
    assert c[("train", GOOD, "good")] == 762
    assert c[("test", GOOD, "good")] == 190
    defective = ds.select(split="test", label=DEFECTIVE)
    assert len(defective) == 392
    assert Counter(s.defect_type for s in defective) == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103,
    }
    assert all(s.mask_path is not None and s.mask_path.name == f"{s.image_path.stem}_mask.png" for s in defective)
    assert all(s.category == "MT" for s in ds.samples)


def test_hazelnut_toy_from_dataset_root_and_category(shared_data: Path) -> None:
    for root, category in ((shared_data / "hazelnut_toy", None), (shared_data / "hazelnut_toy", "hazelnut"),
                           (shared_data / "hazelnut_toy" / "hazelnut", None)):
        ds = load_dataset(root, category=category)
        assert ds.format == "mvtec" and ds.categories == ["hazelnut"] and ds.issues == []
        assert _counts(ds) == {("train", GOOD, "good"): 28, ("test", GOOD, "good"): 6,
                               ("test", DEFECTIVE, "colour"): 17}
        assert sum(s.mask_path is not None for s in ds.samples) == 17
    with pytest.raises(DatasetError, match="available: hazelnut"):
        load_dataset(shared_data / "hazelnut_toy", category="bottle")


def test_mvtec_grid_mini(shared_data: Path) -> None:
    ds = load_dataset(shared_data / "mvtec_ad_grid_mini" / "grid")
    assert ds.format == "mvtec" and ds.issues == []
    assert len(ds.select(split="train", label=GOOD)) == 25
    assert len(ds.select(split="test", label=GOOD)) == 3
    defective = ds.select(label=DEFECTIVE)
    assert len(defective) == 11
    assert {s.defect_type for s in defective} == {"bent", "broken", "glue", "thread", "metal_contamination"}
    assert all(s.mask_path is not None and s.mask_path.name == f"{s.image_path.stem}_mask.png" for s in defective)


def test_neu_det_voc(shared_data: Path) -> None:
    root = shared_data / "neu_det"
    assert detect_format(root) == "voc"
    ds = load_dataset(root)
    assert ds.issues == []
    assert len(ds.samples) == 1800
    assert sum(len(s.boxes) for s in ds.samples) == 4189
    assert ds.class_names == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    assert Counter(s.defect_type for s in ds.samples) == {c: 300 for c in ds.class_names}
    assert all(s.label == DEFECTIVE for s in ds.samples)
    first = next(s for s in ds.samples if s.image_path.name == "crazing_1.jpg")
    # <xmin>2 <ymin>2 <xmax>193 <ymax>194, 1-based inclusive -> 0-based end-exclusive
    assert (first.boxes[0].x0, first.boxes[0].y0, first.boxes[0].x1, first.boxes[0].y1) == (1, 1, 193, 194)


def test_visa_split_csv_without_images(shared_data: Path) -> None:
    root = shared_data / "visa_split_csv"
    assert detect_format(root) == "visa"
    ds = VisaReader(check_files=False).load(root)
    assert len(ds.categories) == 12
    assert Counter((s.split, s.label) for s in ds.samples) == {
        ("train", GOOD): 8659, ("test", GOOD): 962, ("test", DEFECTIVE): 1200,
    }
    assert all(s.mask_path is not None for s in ds.select(label=DEFECTIVE))
    assert ds.issues == []
    # With the default file check every image is missing: one clear error rather than 10k issues.
    with pytest.raises(DatasetError, match=r"none of the 10821 images listed in 1cls\.csv exist"):
        load_dataset(root)
