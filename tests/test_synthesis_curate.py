"""Curating a synthetic set (engine.synthesis.curate, job curate_synthetic_set): rejected samples lose their image
and mask files and their manifest rows, nothing else is touched, and bad input is refused naming the folder, the
field or the name, before anything is deleted.

Real components: the synthetic-set writer, the MVTec reader, the job registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.datasets.registry import load_dataset
from engine.errors import DatasetError, DefectScopeError
from engine.jobs import run_job
from engine.synthesis.curate import reject_samples
from engine.synthesis.synthetic_set import MANIFEST_FILE, read_manifest, write_synthetic_set

TYPES = ("crack", "hole")


def make_set(out: Path, per_type: int = 3) -> Path:
    """A small synthetic set written by the real writer: per_type samples of each type, a square defect each."""
    def samples():
        for k, name in enumerate(TYPES):
            for i in range(per_type):
                image = np.full((32, 40, 3), 100 + 20 * k + i, np.uint8)
                mask = np.zeros((32, 40), bool)
                mask[4 + i:12 + i, 6:14] = True
                image[mask] = 220
                yield image, mask, name, f"donor_{name}_{i}.png"

    write_synthetic_set(out, samples(), {"method": "procedural", "source": "test", "seed": 0})
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rejecting_removes_exactly_the_samples_files_and_rows(tmp_path: Path) -> None:
    syn = make_set(tmp_path / "syn")
    before = files_of(syn)
    target = read_manifest(syn)["samples"][1]
    summary = reject_samples(syn, [target["image"], target["image"]])  # named twice, removed once
    assert summary == {"folder": str(syn), "rejected": 1, "kept": 5, "per_type": {"crack": 2, "hole": 3},
                       "rejected_total": 1}
    after = files_of(syn)
    assert set(before) - set(after) == {target["image"], target["mask"]}
    # Every other file is byte for byte what it was (the manifest apart).
    assert all(after[name] == data for name, data in before.items() if name in after and name != MANIFEST_FILE)
    manifest = read_manifest(syn)
    assert len(manifest["samples"]) == 5 and target not in manifest["samples"]
    assert manifest["per_type"] == {"crack": 2, "hole": 3} and manifest["rejected"] == 1
    assert manifest["method"] == "procedural" and manifest["synthetic"] is True  # the rest of the manifest stays
    assert not list(syn.glob(f"{MANIFEST_FILE}*.tmp")) and not list(syn.glob(f".{MANIFEST_FILE}*"))
    # The MVTec reader (what training's --extra uses) sees the curated set.
    assert len(load_dataset(syn).samples) == 5

    # A whole type rejected stays listed at 0; the running count adds up.
    holes = [row["image"] for row in manifest["samples"] if row["type"] == "hole"]
    summary = reject_samples(syn, holes)
    assert summary["per_type"] == {"crack": 2, "hole": 0} and summary["rejected_total"] == 4
    assert read_manifest(syn)["rejected"] == 4 and not list((syn / "train" / "hole").glob("*.png"))


def test_refusals_name_the_problem_and_delete_nothing(tmp_path: Path) -> None:
    syn = make_set(tmp_path / "syn")
    before = files_of(syn)
    with pytest.raises(DatasetError, match=r"'train/crack/9999.png'.*\(and 1 more\)"):
        reject_samples(syn, ["train/crack/0000.png", "train/crack/9999.png", "nope.png"])
    assert files_of(syn) == before  # the valid name was not removed either

    real = tmp_path / "real"
    (real / "train" / "good").mkdir(parents=True)
    (real / "train" / "good" / "000.png").write_bytes(b"not touched")
    with pytest.raises(DatasetError, match=f"not a synthetic set \\(no {MANIFEST_FILE}\\)"):
        reject_samples(real, ["train/good/000.png"])
    assert (real / "train" / "good" / "000.png").read_bytes() == b"not touched"
    with pytest.raises(DatasetError, match="folder not found"):
        reject_samples(tmp_path / "nowhere", ["x.png"])

    # A manifest naming a file outside the set (hand-edited or hostile) is refused before any deletion.
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep me")
    manifest = json.loads((syn / MANIFEST_FILE).read_text())
    manifest["samples"][0]["mask"] = "../precious.png"
    (syn / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"samples\[0\]\.mask '\.\./precious\.png' is not a file inside"):
        reject_samples(syn, [manifest["samples"][0]["image"]])
    assert outside.read_bytes() == b"keep me" and (syn / manifest["samples"][0]["image"]).is_file()
    manifest["samples"][0]["mask"] = MANIFEST_FILE
    (syn / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="is not a file inside"):
        reject_samples(syn, [manifest["samples"][0]["image"]])

    # Malformed manifests name their field.
    manifest["samples"][0] = {"image": "train/crack/0000.png"}
    (syn / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"samples\[0\]\.mask is missing"):
        reject_samples(syn, ["train/crack/0000.png"])
    (syn / MANIFEST_FILE).write_text(json.dumps({**manifest, "samples": "all"}))
    with pytest.raises(DatasetError, match='"samples" must be a list'):
        reject_samples(syn, ["train/crack/0000.png"])


def test_an_interrupted_curation_finishes_when_run_again(tmp_path: Path) -> None:
    """Files go first, the manifest last: after a stop in between the rejected images are already gone (they can
    no longer train) and the same request completes the manifest."""
    syn = make_set(tmp_path / "syn")
    row = read_manifest(syn)["samples"][0]
    (syn / row["image"]).unlink()  # as if the process died after deleting the image
    summary = reject_samples(syn, [row["image"]])
    assert summary["kept"] == 5 and not (syn / row["mask"]).exists()
    assert row not in read_manifest(syn)["samples"]


def test_the_job_curates_and_refuses_clearly(tmp_path: Path) -> None:
    syn = make_set(tmp_path / "syn")
    image = read_manifest(syn)["samples"][0]["image"]
    result = run_job("curate_synthetic_set", {"folder": str(syn), "reject": [image]})
    assert result["rejected"] == 1 and result["kept"] == 5 and not (syn / image).exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DatasetError, match=f"{plain}: not a synthetic set"):
        run_job("curate_synthetic_set", {"folder": str(plain), "reject": ["a.png"]})
    with pytest.raises(DefectScopeError, match="reject"):
        run_job("curate_synthetic_set", {"folder": str(syn), "reject": []})
