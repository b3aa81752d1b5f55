"""One scoring path (engine.scoring) and one predictions schema (engine.predictions): eval, infer and
score_dataset give the same score and verdict for the same image, record the split eval uses, and write one
schema the GUI reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import DEFECTIVE, GOOD, Sample
from engine.errors import DefectScopeError
from engine.evaluate import evaluate
from engine.infer import infer
from engine.predictions import SCORES_FILE, read_predictions
from engine.runtime.model_format import open_model
from engine.score_dataset import score_dataset
from engine.scoring import NG, OK, Scored, ScoreFailure, score_samples, select_samples, verdict
from tests.conftest import DEMO_CATEGORY


def test_the_verdict_rule_is_at_or_above_the_threshold() -> None:
    assert verdict(0.5, 0.5) == NG and verdict(0.4999, 0.5) == OK and verdict(3.2, 3.0) == NG


def test_the_loop_scores_in_order_reports_progress_and_keeps_going_past_a_bad_file(trained_model: Path,
                                                                                 demo_data: Path,
                                                                                 tmp_path: Path) -> None:
    goods = sorted((demo_data / DEMO_CATEGORY / "test" / "good").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(goods[0].read_bytes()[:100])
    samples = [Sample(goods[0]), Sample(broken), Sample(goods[1])]
    scorer = open_model(trained_model, device="cpu")
    events: list[tuple[float, str]] = []
    results = list(score_samples(scorer, samples, key=lambda s: s.image_path.name,
                                 progress=lambda f, m: events.append((f, m))))
    assert [type(r) for r in results] == [Scored, ScoreFailure, Scored]
    assert [r.key for r in results] == [goods[0].name, "broken.png", goods[1].name]
    assert str(broken) in results[1].error
    ok = results[0]
    assert ok.verdict == verdict(ok.score, scorer.threshold) and ok.latency_ms > 0
    assert ok.anomaly_map.shape == ok.image.shape[:2]
    assert ok.score == pytest.approx(scorer.score(samples[0])[0], abs=1e-6)
    assert [f for f, _ in events] == pytest.approx([1 / 3, 2 / 3, 1.0]) and events[-1][1] == "scored 3/3 images"


@pytest.fixture
def plain_folder(demo_data: Path, tmp_path: Path) -> Path:
    """An engineer's folder without splits: good/ and dent/ images."""
    folder = tmp_path / "parts"
    (folder / "good").mkdir(parents=True)
    (folder / "dent").mkdir()
    src = demo_data / DEMO_CATEGORY
    for i, f in enumerate(sorted((src / "train" / "good").glob("*.png"))[:12]):
        (folder / "good" / f"g{i:02d}.png").write_bytes(f.read_bytes())
    for i, f in enumerate(sorted((src / "test" / "dent").glob("*.png"))[:3]):
        (folder / "dent" / f"d{i:02d}.png").write_bytes(f.read_bytes())
    return folder


def test_score_dataset_records_the_split_eval_uses_and_the_same_scores(trained_model: Path, plain_folder: Path,
                                                                      tmp_path: Path) -> None:
    """The workbench's metrics read the resolved split: its "test" images are exactly eval's, with eval's
    scores and verdicts (before, a folder without splits was all "unspecified" in scores.json)."""
    score_dataset(trained_model, plain_folder, tmp_path / "pred", device="cpu")
    preds = read_predictions(tmp_path / "pred")
    assert {i.split for i in preds.items.values()} == {"train", "test"}
    report = evaluate(trained_model, plain_folder, device="cpu")
    tested = {row["path"]: row for row in report["per_image"]}
    in_test = {i.path: i for i in preds.items.values() if i.split == "test"}
    assert set(in_test) == set(tested) and len(tested) == report["n_test"] > 3
    for path, item in in_test.items():
        assert item.score == pytest.approx(tested[path]["score"], abs=1e-6)
        assert item.verdict == tested[path]["verdict"] and item.label == tested[path]["label"]
    # the splits filter takes the resolved split too
    score_dataset(trained_model, plain_folder, tmp_path / "test_only", splits=["test"], device="cpu")
    assert {i.path for i in read_predictions(tmp_path / "test_only").items.values()} == set(tested)


def test_infer_and_score_dataset_write_one_schema(trained_model: Path, demo_data: Path, tmp_path: Path) -> None:
    folder = demo_data / DEMO_CATEGORY / "test" / "good"
    infer(trained_model, [folder], tmp_path / "inf", device="cpu")
    score_dataset(trained_model, demo_data, tmp_path / "ds", category=DEMO_CATEGORY, splits=["test"], device="cpu")
    a, b = read_predictions(tmp_path / "inf"), read_predictions(tmp_path / "ds")
    raw_a = json.loads((tmp_path / "inf" / SCORES_FILE).read_text())
    raw_b = json.loads((tmp_path / "ds" / SCORES_FILE).read_text())
    assert set(raw_a) == set(raw_b)  # the same top-level fields
    assert a.threshold == b.threshold and a.provider == b.provider == "CPUExecutionProvider"
    key_of = {i.path: k for k, i in b.items.items()}
    assert len(a.items) == len(list(folder.glob("*.png")))
    for key, item in a.items.items():
        other = b.items[key_of[item.path]]
        assert item.score == pytest.approx(other.score, abs=1e-6) and item.verdict == other.verdict
        assert np.allclose(a.anomaly_map(key), b.anomaly_map(key_of[item.path]), atol=1e-3)
    assert not a.is_for(demo_data, DEMO_CATEGORY) and b.is_for(demo_data, DEMO_CATEGORY)


def test_predictions_of_earlier_score_jobs_still_load_and_bad_ones_are_named(tmp_path: Path) -> None:
    """scores.json written before this schema (no path per item) still opens; a broken or tampered one never
    makes the reader crash or read outside its folder."""
    (tmp_path / "maps").mkdir()
    np.save(tmp_path / "maps" / "000000.npy", np.ones((4, 4), np.float16))
    (tmp_path / SCORES_FILE).write_text(json.dumps({
        "model": "/m", "data": "/d", "category": None, "threshold": 0.5, "provider": "CPUExecutionProvider",
        "n_scored": 2, "notes": [], "errors": {},
        "items": {"good/0.png": {"score": 0.1, "verdict": "OK", "map": "maps/000000.npy", "label": GOOD,
                                 "defect_type": None, "split": "test"},
                  "bad/0.png": {"score": 0.9, "verdict": "NG", "map": "../../etc/passwd", "label": DEFECTIVE,
                                "defect_type": "dent", "split": "test"}}}))
    preds = read_predictions(tmp_path)
    assert preds.scores == {"good/0.png": 0.1, "bad/0.png": 0.9} and preds.items["good/0.png"].path == "good/0.png"
    assert preds.anomaly_map("good/0.png").shape == (4, 4) and preds.anomaly_map("bad/0.png") is None
    assert preds.splits == {"good/0.png": "test", "bad/0.png": "test"}
    (tmp_path / SCORES_FILE).write_text('{"threshold": 0.5, "items": {"a": {"score": NaN}}}')
    with pytest.raises(DefectScopeError, match=f"{SCORES_FILE}: unreadable predictions"):
        read_predictions(tmp_path)


def test_select_samples_resolves_splits_like_eval(tmp_path: Path) -> None:
    goods = [Sample(tmp_path / f"g{i}.png", label=GOOD) for i in range(30)]
    bad = [Sample(tmp_path / "d.png", label=DEFECTIVE)]
    chosen = select_samples(goods + bad, ["test"])
    assert bad[0].image_path in {s.image_path for s in chosen} and all(s.split == "test" for s in chosen)
    assert len(select_samples(goods + bad, ["unspecified"])) == 31  # the split the folder declares
    assert {s.split for s in select_samples(goods + bad)} == {"train", "test"}
