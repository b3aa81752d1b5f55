"""Procedural defect synthesis (engine.synthesis): real defects pasted on good parts with exact masks, written as a
synthetic set that trains (--extra) and never measures a model.

Real components: the synthesize job through the CLI in-process, the dataset readers, the segmentation split rule.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.datasets.imageio import read_image, read_mask
from engine.datasets.registry import load_dataset
from engine.datasets.segmentation import load_extra_samples, load_segmentation_split
from engine.errors import DatasetError, DefectScopeError
from engine.synthesis.procedural import Donor, pasted_defect
from engine.synthesis.synthetic_set import MANIFEST_FILE, read_manifest
from tests.test_defect_segmentation import CLASSES, write_mvtec


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec(tmp_path_factory.mktemp("synth") / "tiles")


def test_a_pasted_defect_is_exactly_its_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = np.full((64, 80, 3), 120, np.uint8)
    donor_image = np.full((50, 50, 3), 140, np.uint8)
    donor_mask = np.zeros((50, 50), bool)
    donor_mask[10:30, 20:24] = True  # a thin bar, darker than its surroundings by 100
    donor_image[donor_mask] = 40
    image, mask = pasted_defect(good, Donor(donor_image, donor_mask, "bar"), rng)
    assert mask.sum() == donor_mask.sum()  # every defect pixel, turned or flipped, and nothing else
    # Inside the mask the defect, shifted by the difference of the surroundings (120 - 140): 40 - 20 = 20.
    assert np.abs(image[mask].astype(int) - 20).max() <= 1
    # Outside, the good part, except a one-pixel feathered edge around the mask.
    from scipy.ndimage import binary_dilation

    far = ~binary_dilation(mask, iterations=2)
    assert (image[far] == 120).all()
    with pytest.raises(DefectScopeError, match="fewer than"):
        pasted_defect(good, Donor(donor_image, np.zeros((50, 50), bool), "bar"), rng)


def test_synthesize_pastes_only_the_drawn_donors_into_a_train_only_set(tiles: Path, tmp_path: Path) -> None:
    from app.cli import main

    out = tmp_path / "syn"
    assert main(["synthesize", "--data", str(tiles), "--out", str(out), "--count-per-type", "6",
                 "--shots-per-type", "2", "--shots-seed", "1"]) == 0
    manifest = read_manifest(out)
    assert manifest["per_type"] == {c: 6 for c in CLASSES}
    # The donors are exactly the real images a 2-shot model of the same draw trains on, none of its held-out ones.
    split = load_segmentation_split(tiles, shots_per_type=2, shots_seed=1)
    for i, name in enumerate(split.classes):
        trained = sorted(s.image_path.name for s in split.train if s.label == i + 1)
        assert manifest["donors"][name] == trained
    data = load_dataset(out)
    assert len(data.samples) == 12 and {s.split for s in data.samples} == {"train"}
    for s in data.samples:
        image, mask = read_image(s.image_path), read_mask(s.mask_path)
        assert mask.shape == image.shape[:2] and mask.any()
        # The tiles' defects are a bar at 230 or a disc at 30 on a ~128 background, so a mask aligned with the
        # painted defect sees those values, and its surroundings do not.
        inside = image[mask].mean()
        assert abs(inside - (230 if s.defect_type == "bright_bar" else 30)) < abs(image[~mask].mean() - inside) + 1
        assert abs(image[~mask].mean() - 128) < 25
    extra, summary = load_extra_samples([out], split.classes)
    assert len(extra) == 12 and summary[0]["per_type"] == {c: 6 for c in CLASSES}
    # Same seeds, same set.
    again = tmp_path / "again"
    assert main(["synthesize", "--data", str(tiles), "--out", str(again), "--count-per-type", "6",
                 "--shots-per-type", "2", "--shots-seed", "1"]) == 0
    a, b = sorted((out / "train").rglob("*.png")), sorted((again / "train").rglob("*.png"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_a_synthetic_set_never_measures_a_model_and_bad_input_is_named(tiles: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    out = tmp_path / "syn"
    assert main(["synthesize", "--data", str(tiles), "--out", str(out), "--count-per-type", "2"]) == 0
    with pytest.raises(DatasetError, match=MANIFEST_FILE):
        load_segmentation_split(out)
    # An occupied output folder is refused, never overwritten.
    assert main(["synthesize", "--data", str(tiles), "--out", str(out), "--count-per-type", "2"]) != 0
    assert "not empty" in capsys.readouterr().err
    assert json.loads((out / MANIFEST_FILE).read_text())["per_type"] == {c: 2 for c in CLASSES}
    assert main(["synthesize", "--data", str(tiles), "--out", str(tmp_path / "x"), "--classes", "nope"]) != 0
    assert "nope" in capsys.readouterr().err
    assert main(["synthesize", "--data", str(tiles), "--out", str(tmp_path / "y"), "--count-per-type", "0"]) != 0
    assert "count_per_type" in capsys.readouterr().err.replace("-", "_")
