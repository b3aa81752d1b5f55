"""Review decisions (app.review.store) and threshold arithmetic (app.review.threshold): no Qt involved."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.review.store import CSV_COLUMNS, ReviewStore, ReviewStoreError, store_for_dataset
from app.review.threshold import UNSPECIFIED_DEFECT, ScoreSet, per_defect_recall, threshold_impact
from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):
    s = ReviewStore(tmp_path / "reviews.sqlite", reviewer="alice")
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------ store


def test_decisions_persist_across_reopen(tmp_path: Path):
    path = tmp_path / "r.sqlite"
    with ReviewStore(path, reviewer="alice") as s:
        s.set_verdict("good/000.png", "ok")
        s.set_verdict("scratch/001.png", "ng", note="deep scratch", score=0.83, threshold=0.5)
    with ReviewStore(path, reviewer="bob") as s:
        latest = s.latest()
    assert sorted(latest) == ["good/000.png", "scratch/001.png"]
    d = latest["scratch/001.png"]
    assert (d.verdict, d.note, d.reviewer, d.score, d.threshold) == ("ng", "deep scratch", "alice", 0.83, 0.5)
    assert d.decided_at.endswith("+00:00")  # UTC, whatever the reviewer's time zone


def test_history_is_append_only_and_ordered(store: ReviewStore):
    store.set_verdict("a.png", "unsure", note="look again")
    store.set_verdict("a.png", "ng")  # note=None keeps the note
    store.set_note("a.png", "crack at the rim")  # keeps the verdict
    store.set_verdict("a.png", None)  # cleared verdict, note stays
    store.set_verdict("b.png", "ok")
    history = store.history("a.png")
    assert [(d.verdict, d.note) for d in history] == [
        ("unsure", "look again"),
        ("ng", "look again"),
        ("ng", "crack at the rim"),
        (None, "crack at the rim"),
    ]
    assert [d.decided_at for d in history] == sorted(d.decided_at for d in history)
    assert store.latest()["a.png"].verdict is None
    store.set_note("a.png", "")  # nothing left: back to "not reviewed"
    assert set(store.latest()) == {"b.png"}
    assert len(store.history("a.png")) == 5
    assert store.history("never-seen.png") == []


def test_set_note_keeps_the_score_the_verdict_was_made_at(store: ReviewStore):
    store.set_verdict("a.png", "ng", score=0.9, threshold=0.4)
    d = store.set_note("a.png", "ok after all?")
    assert (d.verdict, d.score, d.threshold) == ("ng", 0.9, 0.4)


def test_decision_survives_process_killed_right_after_set_verdict(tmp_path: Path):
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("no SIGKILL on this platform")
    path = tmp_path / "crash.sqlite"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from app.review.store import ReviewStore\n"
        "s = ReviewStore(Path(sys.argv[1]), reviewer='crash')\n"
        "s.set_verdict('line1/0042.png', 'ng', note='killed right after')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with ReviewStore(path) as s:
        d = s.latest()["line1/0042.png"]
    assert (d.verdict, d.note, d.reviewer) == ("ng", "killed right after", "crash")


def test_export_csv_quotes_notes_and_writes_latest_only(store: ReviewStore, tmp_path: Path):
    tricky = 'he said "no", twice\nsecond line; ünïcödé'
    store.set_verdict("b/2.png", "ok")
    store.set_verdict("a/1.png", "unsure", note="first")
    store.set_verdict("a/1.png", "ng", note=tricky, score=0.75, threshold=0.5)
    out = tmp_path / "export.csv"
    out.write_text("old export\n")
    assert store.export_csv(out) == 2
    raw = out.read_text(encoding="utf-8-sig")
    assert '"he said ""no"", twice\nsecond line; ünïcödé"' in raw
    with out.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    header = rows[0]
    body = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    assert [r["key"] for r in body] == ["a/1.png", "b/2.png"]
    assert body[0]["verdict"] == "ng" and body[0]["note"] == tricky and float(body[0]["score"]) == 0.75
    assert body[0]["reviewer"] == "alice" and body[0]["decided_at"]
    assert body[1]["note"] == "" and body[1]["score"] == ""
    assert not list(tmp_path.glob(".export.csv.*"))  # no temp file left behind


def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    junk = b"this is a spreadsheet someone saved here by mistake, not SQLite " * 20
    path.write_bytes(junk)
    with pytest.raises(ReviewStoreError, match=str(path)):
        ReviewStore(path)
    assert path.read_bytes() == junk


def test_damaged_database_is_refused(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(path) as s:
        for i in range(300):
            s.set_verdict(f"img/{i:04d}.png", "ok", note="x" * 200)
    # Checkpoint the WAL into the main file, then scribble over a data page.
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 3 + 2048] = b"\xff" * 2048
    path.write_bytes(bytes(data))
    with pytest.raises(ReviewStoreError, match=str(path)):
        ReviewStore(path)


def test_another_programs_sqlite_file_is_refused(tmp_path: Path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(ReviewStoreError, match="another program"):
        ReviewStore(path)


def test_bad_inputs_raise_value_error(store: ReviewStore):
    with pytest.raises(ValueError, match="'broken'"):
        store.set_verdict("a.png", "broken")
    with pytest.raises(ValueError, match="'OK'"):
        store.set_verdict("a.png", "OK")
    with pytest.raises(ValueError, match="non-empty"):
        store.set_verdict("", "ok")
    with pytest.raises(ValueError, match="score"):
        store.set_verdict("a.png", "ok", score=float("nan"))
    assert store.latest() == {}


def test_store_for_dataset_lives_in_data_home_with_a_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(home))
    dataset = tmp_path / "datasets" / "bottle"
    dataset.mkdir(parents=True)
    path = store_for_dataset(dataset)
    assert path.parent == home / "reviews" and path.suffix == ".sqlite" and len(path.stem) == 16
    assert store_for_dataset(dataset / "sub" / "..") == path  # resolved first
    assert store_for_dataset(tmp_path / "datasets" / "cable") != path
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["dataset_root"] == str(dataset.resolve())
    with ReviewStore(path) as s:
        s.set_verdict("good/000.png", "ok")
    assert not any(dataset.iterdir())  # nothing written into the dataset


# ------------------------------------------------------------------------------------------------ threshold

# Hand-made example. NG when score >= threshold.
SCORES = {"a": 0.1, "b": 0.4, "c": 0.6, "d": 0.3, "e": 0.7, "f": 0.9, "g": 0.55, "h": 0.2}
LABELS = {"a": GOOD, "b": GOOD, "c": GOOD, "d": DEFECTIVE, "e": DEFECTIVE, "f": DEFECTIVE, "g": UNKNOWN}
TYPES = {"d": "scratch", "e": "scratch", "f": "crack", "a": "good", "b": "good", "c": "good"}


def test_threshold_impact_counts_by_hand():
    i = threshold_impact(SCORES, LABELS, 0.5)
    # NG: c (good -> false positive), e, f, g (unknown). OK: a, b, d (defective -> miss), h (no label).
    assert (i.predicted_ng, i.predicted_ok) == (4, 4)
    assert (i.false_positives, i.misses, i.detected) == (1, 1, 2)
    assert (i.n_good, i.n_defective, i.n_unknown, i.n_images) == (3, 3, 2, 8)
    assert i.flipped == 0 and i.previous is None
    # A score equal to the threshold is NG.
    assert threshold_impact(SCORES, LABELS, 0.6).false_positives == 1


def test_threshold_impact_flips():
    # From 0.35 to 0.5 only b (0.4) changes; from 0.5 back to 0.35 the same one.
    assert threshold_impact(SCORES, LABELS, 0.5, previous=0.35).flipped == 1
    assert threshold_impact(SCORES, LABELS, 0.35, previous=0.5).flipped == 1
    assert threshold_impact(SCORES, LABELS, 0.0, previous=1.0).flipped == 8
    assert threshold_impact(SCORES, LABELS, 0.5, previous=0.5).flipped == 0


def test_per_defect_recall_by_hand():
    assert per_defect_recall(SCORES, LABELS, TYPES, 0.5) == {"crack": (1, 1), "scratch": (1, 2)}
    assert per_defect_recall(SCORES, LABELS, TYPES, 0.0) == {"crack": (1, 1), "scratch": (2, 2)}
    untyped = per_defect_recall(SCORES, LABELS, {}, 0.5)
    assert untyped == {UNSPECIFIED_DEFECT: (2, 3)}


def test_threshold_rejects_bad_data_naming_the_image():
    with pytest.raises(ValueError, match="'x'"):
        threshold_impact({"x": float("nan")}, {}, 0.5)
    with pytest.raises(ValueError, match="'bad'"):
        threshold_impact({"x": 0.1}, {"x": "bad"}, 0.5)
    empty = threshold_impact({}, {}, 0.5)
    assert (empty.n_images, empty.flipped) == (0, 0)


def test_score_set_matches_a_plain_loop_on_10k_images():
    rng = np.random.default_rng(0)
    keys = [f"img/{i:05d}.png" for i in range(10_000)]
    scores = dict(zip(keys, rng.random(len(keys)).tolist(), strict=True))
    labels = {k: (GOOD, DEFECTIVE, UNKNOWN)[i % 3] for i, k in enumerate(keys)}
    types = {k: ("scratch", "dent", None)[i % 7 % 3] for i, k in enumerate(keys)}
    s = ScoreSet(scores, labels, types)
    t, prev = 0.42, 0.6
    i = s.impact(t, prev)
    assert i.false_positives == sum(scores[k] >= t and labels[k] == GOOD for k in keys)
    assert i.misses == sum(scores[k] < t and labels[k] == DEFECTIVE for k in keys)
    assert i.flipped == sum((scores[k] >= t) != (scores[k] >= prev) for k in keys)
    recall = s.per_defect_recall(t)
    for name, (detected, total) in recall.items():
        members = [k for k in keys if labels[k] == DEFECTIVE and (types[k] or UNSPECIFIED_DEFECT) == name]
        assert (detected, total) == (sum(scores[k] >= t for k in members), len(members))
