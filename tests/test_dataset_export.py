"""Dataset writers: every export is read back by the real reader and compared with its source.

Shared-data round trips (NEU-DET boxes, magnetic tile masks) skip visibly without ../shared/data; the
synthetic round trip and the safety tests run everywhere.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.datasets import DEFECTIVE, GOOD, UNKNOWN, Box, Dataset, Polygon, Sample, load_dataset
from engine.datasets.export_job import ExportReport, mask_to_polygons, polygons_to_mask, sample_mask
from engine.datasets.imageio import image_size
from engine.datasets.writers import export_dataset, writer_formats
from engine.errors import DatasetError

ALL_FORMATS = ["coco", "yolo", "voc", "labelme", "mvtec"]


def _reload(src: Dataset, out: Path, fmt: str) -> tuple[ExportReport, dict[Path, Sample]]:
    """Export, reload with the real reader, and pair every reloaded sample with its source path."""
    report = export_dataset(src, out, fmt)
    assert report.ok, report.skipped
    back = load_dataset(out, format=fmt)
    assert not back.issues, back.issues[:3]
    by_path = {s.image_path: s for s in back.samples}
    paired = {src_path: by_path[dst] for src_path, dst in report.files.items()}
    assert len(paired) == len(src.samples)
    return report, paired


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _box_error(a: list[Box], b: list[Box]) -> float:
    """Largest edge difference after pairing boxes in a stable order (class, then position)."""
    assert len(a) == len(b)

    def key(x: Box) -> tuple[str, float, float]:
        return x.class_name, round(x.x0), round(x.y0)

    err = 0.0
    for p, q in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        assert p.class_name == q.class_name
        err = max(err, abs(p.x0 - q.x0), abs(p.y0 - q.y0), abs(p.x1 - q.x1), abs(p.y1 - q.y1))
    return err


# --------------------------------------------------------------------------------------------------
# (a) NEU-DET: VOC boxes, six classes


@pytest.fixture(scope="module")
def neu_subset(shared_data: Path) -> Dataset:
    ds = load_dataset(shared_data / "neu_det", format="voc")
    # Every 45th image: 40 images spread over all six classes (the files are sorted by class).
    ds.samples = ds.samples[::45][:40]
    return ds


@pytest.mark.parametrize("fmt", ["coco", "yolo", "voc", "labelme"])
def test_neu_det_boxes_round_trip(neu_subset: Dataset, tmp_path: Path, fmt: str) -> None:
    src = neu_subset
    assert len(src.samples) == 40 and len({s.defect_type for s in src.samples}) == 6
    _, paired = _reload(src, tmp_path / fmt, fmt)
    worst = 0.0
    for s in src.samples:
        r = paired[s.image_path]
        assert (r.label, r.defect_type, r.class_names) == (s.label, s.defect_type, s.class_names)
        worst = max(worst, _box_error(s.boxes, r.boxes))
    back_names = load_dataset(tmp_path / fmt, format=fmt).class_names
    assert set(back_names) == {c for s in src.samples for c in s.class_names}
    if fmt in ("coco", "yolo"):  # these keep the full, ordered class list
        assert back_names == src.class_names
    print(f"NEU-DET {fmt}: max box error {worst:.4f} px")
    assert worst <= 1.0


# --------------------------------------------------------------------------------------------------
# (b) Magnetic tile: MVTec masks


@pytest.fixture(scope="module")
def tile_subset(shared_data: Path) -> Dataset:
    ds = load_dataset(shared_data / "magnetic_tile", format="mvtec")
    defective = [s for s in ds.samples if s.label == DEFECTIVE and s.mask_path is not None]
    by_type: dict[str, list[Sample]] = {}
    for s in defective:
        by_type.setdefault(str(s.defect_type), []).append(s)
    picked = [s for group in by_type.values() for s in group[:4]][:20]  # 4 of each of the 5 types
    good = [s for s in ds.samples if s.label == GOOD]
    ds.samples = picked + good[:5] + good[-5:]  # train and test goods
    return ds


@pytest.mark.parametrize("fmt", ["coco", "labelme", "yolo", "mvtec"])
def test_magnetic_tile_masks_round_trip(tile_subset: Dataset, tmp_path: Path, fmt: str) -> None:
    src = tile_subset
    assert len(src.select(label=DEFECTIVE)) == 20 and len(src.select(label=GOOD)) == 10
    _, paired = _reload(src, tmp_path / fmt, fmt)
    ious = []
    for s in src.samples:
        r = paired[s.image_path]
        assert (r.label, r.defect_type) == (s.label, s.defect_type)
        size = image_size(s.image_path)
        if s.label == DEFECTIVE:
            ious.append(_iou(sample_mask(s, size), sample_mask(r, size)))
        else:
            assert not r.boxes and not r.polygons and r.mask_path is None
    print(f"magnetic tile {fmt}: min IoU {min(ious):.4f}, mean {np.mean(ious):.4f}")
    assert min(ious) >= 0.95


# --------------------------------------------------------------------------------------------------
# (c) Synthetic: runs without shared data, every format


@pytest.fixture()
def synthetic(tmp_path: Path) -> Dataset:
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(0)

    def image(name: str) -> Path:
        p = root / name
        cv2.imwrite(str(p), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
        return p

    mask = np.zeros((60, 80), np.uint8)
    cv2.circle(mask, (30, 25), 12, 255, -1)
    mask[50, 70] = 255  # a one-pixel defect: still a valid polygon in every format
    cv2.imwrite(str(root / "scratch_mask.png"), mask)
    poly = Polygon(((10.0, 10.0), (50.0, 12.0), (40.0, 45.0), (12.0, 40.0)), "dent")
    box = Box(5.0, 6.0, 25.0, 30.0, "spot")
    samples = [
        Sample(image("a.png"), split="test", label=DEFECTIVE, defect_type="scratch",
               mask_path=root / "scratch_mask.png"),
        Sample(image("b.png"), split="test", label=DEFECTIVE, defect_type="dent", polygons=[poly],
               boxes=[Box(10.0, 10.0, 50.0, 45.0, "dent")], class_names=["dent"]),
        Sample(image("c.png"), split="test", label=DEFECTIVE, defect_type="spot", boxes=[box],
               class_names=["spot"]),
        Sample(image("d.png"), split="train", label=GOOD, defect_type="good"),
    ]
    return Dataset(root=root, format="synthetic", samples=samples, class_names=["dent", "spot"])


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_synthetic_round_trip_every_format(synthetic: Dataset, tmp_path: Path, fmt: str) -> None:
    before = sorted(p.name for p in synthetic.root.iterdir())
    report, paired = _reload(synthetic, tmp_path / fmt, fmt)
    assert sorted(p.name for p in synthetic.root.iterdir()) == before  # source untouched
    assert report.images == 4
    for s in synthetic.samples:
        r = paired[s.image_path]
        assert (r.label, r.defect_type) == (s.label, s.defect_type), (fmt, s.image_path.name)
        size = image_size(s.image_path)
        want = sample_mask(s, size)
        if fmt == "voc" and (s.polygons or s.mask_path):
            # VOC holds boxes only: compare with the bounding box of each source component instead.
            boxes = np.zeros_like(want)
            for p in mask_to_polygons(want):
                q = np.asarray(p.points, dtype=int)
                boxes[q[:, 1].min():q[:, 1].max() + 1, q[:, 0].min():q[:, 0].max() + 1] = True
            want = boxes
        iou = _iou(want, sample_mask(r, size))
        assert iou >= 0.9, (fmt, s.image_path.name, iou)
    c = paired[synthetic.samples[2].image_path]  # the plain box survives exactly where boxes are kept
    if fmt != "mvtec":
        assert _box_error(c.boxes, [Box(5.0, 6.0, 25.0, 30.0, "spot")]) < 1e-3  # YOLO: 6 decimals
    if fmt in ("coco", "yolo"):
        assert load_dataset(tmp_path / fmt, format=fmt).class_names[:2] == ["dent", "spot"]


def test_mask_polygon_conversion_is_exact() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:20, 8:30] = True
    mask[25, 40] = True
    polys = mask_to_polygons(mask, "x")
    assert len(polys) == 2 and all(len(p.points) >= 3 for p in polys)
    assert np.array_equal(polygons_to_mask(polys, (50, 40)), mask)
    ring = mask.copy()
    ring[10:15, 15:20] = False  # a hole: joined to its outline by a zero-width cut, so it survives
    traced = mask_to_polygons(ring)
    assert len(traced) == 2  # still one polygon per region
    assert np.array_equal(polygons_to_mask(traced, (50, 40)), ring)


def test_writer_registry(tmp_path: Path) -> None:
    assert set(ALL_FORMATS) <= set(writer_formats())
    with pytest.raises(DatasetError, match="no writer for format 'nosuchformat'"):
        export_dataset(Dataset(root=tmp_path / "src", format="x"), tmp_path / "out", "nosuchformat")
    assert not (tmp_path / "out").exists()


def test_unknown_and_unannotated_defective_are_not_turned_good(synthetic: Dataset, tmp_path: Path) -> None:
    synthetic.samples[3].label = UNKNOWN
    synthetic.samples[3].defect_type = None
    synthetic.samples[2].boxes = []  # DEFECTIVE with no geometry at all
    for fmt in ("yolo", "voc", "labelme"):
        report = export_dataset(synthetic, tmp_path / fmt, fmt)
        back = {s.image_path.name: s for s in load_dataset(tmp_path / fmt, format=fmt).samples}
        assert back["c.png"].label == UNKNOWN and back["d.png"].label == UNKNOWN
        assert report.conversions["unknown: unlabelled"] == 1
    report = export_dataset(synthetic, tmp_path / "coco", "coco")
    assert report.images == 2 and report.conversions["not expressible in coco: left out"] == 2


# --------------------------------------------------------------------------------------------------
# (d) safety, (e) unreadable images


def test_refuses_non_empty_target_and_the_source(synthetic: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty") as exc:
        export_dataset(synthetic, out, "coco")
    assert str(out) in str(exc.value)
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left over
    with pytest.raises(DatasetError, match="overlaps the source"):
        export_dataset(synthetic, synthetic.root, "coco", overwrite=True)
    with pytest.raises(DatasetError, match="overlaps the source"):
        export_dataset(synthetic, synthetic.root / "export", "coco")
    export_dataset(synthetic, out, "coco", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "annotations" / "instances_test.json").is_file()
    export_dataset(synthetic, tmp_path / "empty_ok", "yolo")  # an empty existing folder is fine
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unreadable_image_is_reported_not_fatal(synthetic: Dataset, tmp_path: Path) -> None:
    bad = synthetic.root / "broken.png"
    bad.write_bytes(b"not a png at all")
    synthetic.samples.append(Sample(bad, split="test", label=DEFECTIVE, defect_type="spot",
                                    boxes=[Box(1, 1, 5, 5, "spot")]))
    missing_mask = Sample(synthetic.samples[1].image_path, split="test", label=DEFECTIVE,
                          defect_type="scratch", mask_path=synthetic.root / "gone_mask.png")
    for fmt in ALL_FORMATS:
        report = export_dataset(synthetic, tmp_path / fmt, fmt)
        assert [i.path.name for i in report.skipped] == ["broken.png"], fmt
        assert "broken.png" in str(report.skipped[0])
        assert report.images == 4
        load_dataset(tmp_path / fmt, format=fmt)
    synthetic.samples[-1] = missing_mask
    report = export_dataset(synthetic, tmp_path / "coco2", "coco")
    assert [i.path.name for i in report.skipped] == ["gone_mask.png"]


def test_link_instead_of_copy(synthetic: Dataset, tmp_path: Path) -> None:
    report = export_dataset(synthetic, tmp_path / "yolo", "yolo", copy_images=False)
    linked = report.files[synthetic.samples[0].image_path]
    assert linked.is_symlink() and linked.resolve() == synthetic.samples[0].image_path.resolve()
    assert len(load_dataset(tmp_path / "yolo", format="yolo").samples) == 4


def test_name_collisions_get_unique_files(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for d in ("crack", "hole"):
        (root / d).mkdir(parents=True)
        cv2.imwrite(str(root / d / "000.png"), np.zeros((20, 20), np.uint8))
    ds = Dataset(root=root, format="x", samples=[
        Sample(root / d / "000.png", split="test", label=DEFECTIVE, defect_type=d,
               boxes=[Box(2, 2, 8, 8, d)], class_names=[d]) for d in ("crack", "hole")])
    report = export_dataset(ds, tmp_path / "voc", "voc")
    assert sorted(p.name for p in report.files.values()) == ["000.png", "hole_000.png"]
    back = load_dataset(tmp_path / "voc", format="voc")
    assert sorted(s.defect_type or "" for s in back.samples) == ["crack", "hole"]
