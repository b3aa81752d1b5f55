"""Job artifact references and the engine's folder layout: a model an engine trained is named to it by job id and
artifact name, never by a path on the client's machine; the stored parameters are the validated ones."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from engine.client import EngineClient, JobView
from engine.errors import DefectScopeError
from engine.server import layout
from tests.conftest import DEMO_CATEGORY
from tests.test_engine import TOKEN, EngineProcess, _cli

REPO = Path(__file__).resolve().parents[1]


def test_artifact_refs_round_trip_and_malformed_ones_do_not_parse():
    ref = layout.artifact_ref("3f2a9c1b7d4e", "model")
    assert ref == "job:3f2a9c1b7d4e/model"
    assert layout.parse_artifact_ref(ref) == ("3f2a9c1b7d4e", "model")
    assert layout.parse_artifact_ref("job:3f2a9c1b7d4e/model/model.onnx") == ("3f2a9c1b7d4e", "model/model.onnx")
    for text in ("job:", "job:abc", "job:abc/", "job:abc/../x", "job:../x", "job:abc//", "job:a b/model",
                 "job:abc/./..", "job:abc/a\\b", "/data/job:abc/model", "model", ""):
        assert layout.parse_artifact_ref(text) is None, text
    with pytest.raises(ValueError):
        layout.artifact_ref("abc", "../escape")
    with pytest.raises(ValueError):
        layout.artifact_dir(Path("/d"), "abc", "/etc")
    assert layout.artifact_dir(Path("/d"), "abc", "model") == Path("/d/jobs/abc/artifacts/model")


def test_job_view_reads_the_engines_json_and_refuses_a_record_without_identity():
    raw = {"id": "abc123", "kind": "eval", "state": "running", "params": {"model": "/m"}, "progress": 0.5,
           "message": "scoring", "error": None, "result": None, "created": 1.0, "started": 2.0, "finished": None,
           "placement": "running on CPU", "field_of_a_newer_engine": 1}
    job = JobView.from_dict(raw)
    assert job.progress == 0.5 and job.params == {"model": "/m"} and not job.done and job.refs == {}
    assert JobView.from_dict(job.to_dict()) == job
    assert JobView.from_dict({**raw, "state": "failed", "params": None}).done
    assert job.artifact_ref("predictions") == "job:abc123/predictions"
    with pytest.raises(DefectScopeError, match="without state"):
        JobView.from_dict({"id": "x", "kind": "eval"})


def test_a_database_of_an_older_engine_opens_with_its_jobs(tmp_path):
    from engine.server.store import JobStore

    db = layout.database_file(tmp_path)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, state TEXT NOT "
                "NULL, progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', error TEXT, result TEXT, "
                "created REAL NOT NULL, started REAL, finished REAL, placement TEXT)")
    con.execute("INSERT INTO jobs (id, kind, params, state, created) VALUES ('old1', 'eval', '{}', 'succeeded', 1)")
    con.commit()
    con.close()
    store = JobStore(db)
    try:
        assert store.get("old1").refs == {}
        new = store.create("eval", {"model": "/m"}, refs={"model": "job:old1/model"})
        assert [r.id for r in store.list()] == ["old1", new.id] and store.get(new.id).refs == {"model": "job:old1/model"}
    finally:
        store.close()


# Folder names of the engine's data dir, composed anywhere but the layout module: a second owner of the layout.
_LAYOUT_JOIN = re.compile(
    r"/\s*[\"'](jobs|artifacts|uploads|engine\.sqlite|engine\.lock|log\.txt|job\.json|events\.jsonl|token|tls)[\"']")


def test_only_the_layout_module_composes_the_engines_folders():
    offenders = []
    for top in ("engine", "app"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path == REPO / "engine" / "server" / "layout.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _LAYOUT_JOIN.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "compose these through engine.server.layout:\n" + "\n".join(offenders)


@pytest.fixture(scope="module")
def remote_engine(tmp_path_factory):
    """An engine that may read only its own data root (as a remote one would), with a model it trained itself."""
    from engine.datasets.demo import generate_demo_dataset

    base = tmp_path_factory.mktemp("remote")
    root = base / "root"
    data = generate_demo_dataset(root / "demo", categories=[DEMO_CATEGORY], n_train=16, n_test_good=3,
                                 n_test_defect_per_type=1, seed=3)
    (root / "empty").mkdir()
    token_file = base / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(base / "engine", token_file, ("--data-root", str(root))).start()
    client = EngineClient(eng.url, TOKEN)
    try:
        train_id = client.submit("train_anomaly", {"data": str(data), "category": DEMO_CATEGORY, "image_size": 128,
                                                   "bank_size": 256, "device": "cpu"})
        trained = client.wait(train_id, timeout=600, poll=0.3)
        assert trained.succeeded, trained
        yield eng, client, data, trained
    finally:
        client.close()
        eng.stop()


def test_stored_params_are_the_validated_ones_with_every_default(remote_engine):
    eng, client, _data, trained = remote_engine
    from engine.jobs.kinds import TrainAnomalyParams

    defaults = TrainAnomalyParams(data="d", out="o").model_dump(mode="json")
    assert set(trained.params) == set(defaults)  # every field, not only the four the request gave
    for name in ("backbone", "scales", "resize"):
        assert trained.params[name] == defaults[name]
    assert trained.params["image_size"] == 128 and trained.params["bank_size"] == 256
    assert trained.params["out"] == str(layout.artifact_dir(eng.data_dir, trained.id, "model"))
    assert trained.refs == {}
    assert [j.id for j in client.jobs()] == [trained.id] and isinstance(client.jobs()[0], JobView)


def test_a_remote_engine_scores_with_the_model_it_trained_named_by_ref(remote_engine, tmp_path):
    eng, client, data, trained = remote_engine
    ref = trained.artifact_ref("model")
    job_id = client.submit("score_dataset", {"model": ref, "data": str(data), "category": DEMO_CATEGORY})
    job = client.wait(job_id, timeout=300, poll=0.3)
    assert job.succeeded, job
    assert job.refs == {"model": ref}
    assert job.params["model"] == str(layout.artifact_dir(eng.data_dir, trained.id, "model"))
    assert job.params["splits"] is None and job.params["device"] == "auto"  # defaults filled
    names = {a["name"] for a in client.artifacts(job_id)}
    assert "predictions/scores.json" in names
    assert client.job(job_id) == job

    # A path on the client's machine (here: a download of that very model) means nothing to a remote engine.
    local_copy = tmp_path / "models" / trained.id
    client.download(trained.id, local_copy)
    assert (local_copy / "model" / "model.onnx").is_file()
    with pytest.raises(DefectScopeError, match=r"params\.model: .* outside the engine's data roots"):
        client.submit("score_dataset", {"model": str(local_copy / "model"), "data": str(data)})
    before = len(client.jobs())
    http = eng.client()
    for bad, fragment in (
        ("job:ffffffffffff/model", "has no job 'ffffffffffff'"),
        (f"job:{trained.id}/nothing", "has no artifact 'nothing'"),
        (f"job:{trained.id}/../../..", "not an artifact reference"),
        ("job:", "not an artifact reference"),
    ):
        r = http.post("/jobs", json={"kind": "score_dataset", "params": {"model": bad, "data": str(data)}})
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert r.json()["detail"].startswith("params.model: ") and fragment in r.json()["detail"], r.text

    # A job that did not succeed has nothing to refer to.
    failed_id = client.submit("score_dataset", {"model": ref, "data": str(data.parent / "empty")})
    failed = client.wait(failed_id, timeout=120, poll=0.3)
    assert failed.state == "failed", failed
    r = http.post("/jobs", json={"kind": "eval", "params": {"model": f"job:{failed_id}/predictions",
                                                             "data": str(data)}})
    assert r.status_code == 400 and "params.model" in r.text and "failed, not succeeded" in r.text, r.text
    assert len(client.jobs()) == before + 1  # refused requests recorded nothing
    http.close()


def test_jobs_cli_shows_the_typed_job(remote_engine):
    eng, _client, _data, trained = remote_engine
    common = ["jobs", "--engine", eng.url, "--token-file", str(eng.token_file)]
    shown = _cli(*common, "show", trained.id)
    assert shown.returncode == 0, shown.stderr
    assert JobView.from_dict(json.loads(shown.stdout)) == trained
    listing = _cli(*common, "list")
    assert re.search(rf"^{trained.id}\s+train_anomaly\s+succeeded\s+100\.0%", listing.stdout, re.M), listing.stdout
