"""Uploads to a remote engine for real: content-addressed, chunked, resumable; the engine started with --data-root
its own folder only, so a job can use a client's data only through an upload. Fault drills kill the client and the
engine mid-upload."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.client import EngineClient
from engine.errors import DefectScopeError, UploadCancelled
from engine.server import layout
from engine.server.upload_store import UploadStore
from engine.server.uploads import UploadLimits
from engine.upload_manifest import build_manifest
from tests.conftest import DEMO_CATEGORY
from tests.test_engine import REPO, TOKEN, EngineProcess, _cli

TRAIN = {"category": DEMO_CATEGORY, "image_size": 128, "bank_size": 256, "device": "cpu"}


def _dataset(folder: Path, seed: int = 5) -> Path:
    from engine.datasets.demo import generate_demo_dataset

    return generate_demo_dataset(folder, categories=[DEMO_CATEGORY], n_train=8, n_test_good=2,
                                 n_test_defect_per_type=1, seed=seed)


def _remote(base: Path, *extra: str) -> EngineProcess:
    """An engine that may read only its own root: any path of the client's is refused."""
    root = base / "engine_root"
    root.mkdir(parents=True, exist_ok=True)
    token_file = base / "token"
    token_file.write_text(TOKEN)
    return EngineProcess(base / "engine", token_file, ("--data-root", str(root), *extra)).start()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    eng = _remote(tmp_path_factory.mktemp("remote"))
    yield eng
    eng.stop()


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _committed(data_dir: Path) -> list[str]:
    uploads = layout.uploads_dir(data_dir)
    return sorted(p.name for p in uploads.iterdir() if not p.name.startswith(".")) if uploads.is_dir() else []


def test_upload_refs_round_trip_and_malformed_ones_do_not_parse():
    assert layout.upload_ref("0a76bdea4df837de") == "upload:0a76bdea4df837de"
    assert layout.parse_upload_ref("upload:0a76bdea4df837de") == ("0a76bdea4df837de", "")
    assert layout.parse_upload_ref("upload:0a76bdea4df837de/sam/ckpt.pth") == ("0a76bdea4df837de", "sam/ckpt.pth")
    for text in ("upload:", "upload:xyz", "upload:0a76bdea/../x", "upload:../x", "upload:0a76bdea/", "x", "",
                 "job:0a76bdea/model"):
        assert layout.parse_upload_ref(text) is None, text
    with pytest.raises(ValueError):
        layout.upload_dir(Path("/d"), "../etc")


def test_cli_trains_on_a_local_folder_through_auto_upload(remote, tmp_path):
    data = _dataset(tmp_path / "my_parts")
    common = ["jobs", "--engine", remote.url, "--token-file", str(remote.token_file)]
    params = [a for k, v in TRAIN.items() for a in ("--param", f"{k}={v}")]
    refused = _cli(*common, "submit", "train_anomaly", "--param", f"data={data}", "--no-upload", *params)
    assert refused.returncode == 2 and "outside the engine's data roots" in refused.stderr, refused.stderr
    # "./my_parts", as a user types it, from the folder holding it.
    proc = subprocess.run([sys.executable, "-m", "app.cli", *common, "submit", "train_anomaly", "--param",
                           "data=./my_parts", *params, "--wait"], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[0]
    assert f"{job_id} succeeded" in proc.stdout and "[upload] 100%" in proc.stderr, proc.stderr
    job = EngineClient(remote.url, TOKEN).job(job_id)
    upload_id, inside = layout.parse_upload_ref(job.refs["data"])
    assert inside == "my_parts"  # the folder keeps its name on the engine (a category folder is named by it)
    assert job.params["data"] == str(layout.upload_dir(remote.data_dir, upload_id) / "my_parts")
    assert _tree_hashes(layout.upload_dir(remote.data_dir, upload_id) / "my_parts") == _tree_hashes(data)
    # `jobs upload` for scripts: the same folder again is the same upload, nothing sent.
    up = _cli(*common, "upload", str(data))
    assert up.returncode == 0 and up.stdout.strip() == job.refs["data"], up.stderr
    assert "sent 0 new or changed" in up.stderr
    # The cache a user can see: its size against the limit, the eviction rule, this upload.
    listing = _cli(*common, "uploads")
    assert listing.returncode == 0 and "eviction: " in listing.stdout, listing.stderr
    assert job.refs["data"].split("/")[0] in listing.stdout and " MB of " in listing.stdout


def test_a_second_upload_sends_only_the_changed_files_and_hashes_only_those(remote, tmp_path):
    data = _dataset(tmp_path / "ds", seed=7)
    with EngineClient(remote.url, TOKEN) as client:
        used_before = client.upload_cache()["used_bytes"]
        first = client.upload(data)
        n = len([p for p in data.rglob("*") if p.is_file()])
        assert first.files == n and first.blobs_sent == n and first.bytes_sent == first.bytes
        changed = sorted((data / DEMO_CATEGORY / "train" / "good").glob("*.png"))[:2]
        for p in changed:
            p.write_bytes(p.read_bytes() + b"changed")  # still a readable PNG: trailing bytes are ignored
        progress: list[tuple[int, int]] = []
        second = client.upload(data, progress=lambda d, t: progress.append((d, t)))
        assert second.blobs_sent == 2 and second.bytes_sent == sum(p.stat().st_size for p in changed)
        assert second.hashed_files == 2  # the others' hashes came from the cache: not read again
        assert progress[-1] == (second.bytes_sent, second.bytes_sent)
        assert second.ref != first.ref
        listing = client.upload_cache()
        ids = [u["id"] for u in listing["uploads"]]
        assert {first.id, second.id} <= set(ids) and ids.index(second.id) > ids.index(first.id)
        assert listing["limit_bytes"] == 50 << 30 and "least recently used" in listing["eviction"]
        # A path inside an upload is named "upload:<id>/<path>"; one that is not there is refused naming the field.
        with pytest.raises(DefectScopeError, match=r"params\.model: upload:\w+/ds/nope: upload '\w+' has no file 'ds/nope'"):
            client.submit("score_dataset", {"model": f"{first.ref}/nope", "data": first.ref})
        # Both folders share the unchanged files: on disk they count once.
        assert listing["used_bytes"] - used_before == first.bytes + second.bytes_sent


def test_bad_manifests_and_chunks_are_refused_naming_the_file_and_every_route_needs_the_token(remote, tmp_path):
    c = remote.client()
    sha = "0" * 64
    for path, fragment in (("../x.png", "'../x.png': path leaves"), ("/etc/passwd", "'/etc/passwd': path leaves"),
                           ("a/../../x", "path leaves"), ("a//b", "empty or '.'"), ("C:/x", "path leaves"),
                           ("a\\b", "path leaves"), ("", "empty")):
        r = c.post("/uploads/sessions", json={"files": [{"path": path, "size": 1, "sha256": sha}]})
        assert r.status_code == 400 and fragment in r.json()["detail"], (path, r.text)
        assert r.json()["detail"].startswith("files.0.path:"), r.text
    r = c.post("/uploads/sessions", json={"files": [{"path": "big.bin", "size": 1 << 40, "sha256": sha}]})
    assert r.status_code == 413 and "'big.bin'" in r.json()["detail"]
    r = c.post("/uploads/sessions", json={"files": [{"path": "a", "size": 1, "sha256": sha},
                                                    {"path": "a/b", "size": 1, "sha256": sha}]})
    assert r.status_code == 400 and "'a' is a file and a folder" in r.json()["detail"]
    # A blob whose bytes do not match its hash is dropped, never stored.
    content = b"the real content"
    wrong = hashlib.sha256(b"something else" + b"!" * 2).hexdigest()
    assert c.post("/uploads/sessions", json={"files": [{"path": "f.bin", "size": len(content), "sha256": wrong}]}
                  ).status_code == 200
    r = c.put(f"/uploads/blobs/{wrong}", content=content,
              headers={"Content-Range": f"bytes 0-{len(content) - 1}/{len(content)}"})
    assert r.status_code == 400 and "do not have this SHA-256" in r.json()["detail"], r.text
    assert c.get(f"/uploads/blobs/{wrong}").json() == {"sha256": wrong, "size": len(content), "received": 0,
                                                      "complete": False}
    r = c.put(f"/uploads/blobs/{wrong}", content=b"xy", headers={"Content-Range": f"bytes 5-6/{len(content)}"})
    assert r.status_code == 409 and "resume from 0" in r.json()["detail"]
    r = c.put(f"/uploads/blobs/{'1' * 64}", content=b"x", headers={"Content-Range": "bytes 0-0/1"})
    assert r.status_code == 404 and "no open upload session" in r.json()["detail"]
    r = c.post("/jobs", json={"kind": "train_anomaly", "params": {"data": "upload:ffffffffffffffff"}})
    assert r.status_code == 400 and r.json()["detail"].startswith("params.data: upload:ffffffffffffffff: ")
    assert "no upload 'ffffffffffffffff'" in r.json()["detail"]
    for token in (None, "wrong-token-wrong-token"):
        anon = remote.client(token)
        for method, path in (("GET", "/uploads"), ("POST", "/uploads/sessions"), ("GET", f"/uploads/blobs/{sha}"),
                             ("PUT", f"/uploads/blobs/{sha}"), ("POST", "/uploads/sessions/abc/commit"),
                             ("DELETE", "/uploads/abcdef12"), ("HEAD", f"/uploads/blobs/{sha}")):
            assert anon.request(method, path).status_code == 401, (method, path)


_KILLABLE_UPLOAD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.client import EngineClient

    def progress(done, total):
        print(done, total, flush=True)
        time.sleep(0.05)  # slow enough for the test to kill it mid-way

    EngineClient(sys.argv[1], sys.argv[2]).upload_folder(Path(sys.argv[3]), progress=progress, chunk_size=1 << 17)
""")


def test_drill_client_killed_mid_upload_then_resumed_runs_the_job_on_complete_data(remote, tmp_path):
    data = _dataset(tmp_path / "parts", seed=11)
    (data / "extra.bin").write_bytes(os.urandom(4 << 20))  # 32 chunks: the kill lands inside this file
    before = _committed(remote.data_dir)
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_UPLOAD, remote.url, TOKEN, str(data)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if len(lines) >= 12:
            proc.kill()
            break
    proc.wait()
    assert proc.returncode != 0 and len(lines) >= 12
    assert _committed(remote.data_dir) == before  # nothing half-visible
    with EngineClient(remote.url, TOKEN) as client:
        assert len(client.uploads()) == len(before)
        result = client.upload(data, chunk_size=1 << 17)
        sent_before_kill = int(lines[-1].split()[0])
        assert sent_before_kill > 0 and result.bytes_sent <= result.bytes - sent_before_kill + (1 << 17)
        folder = layout.upload_dir(remote.data_dir, result.id) / data.name  # under its own name
        assert _tree_hashes(folder) == _tree_hashes(data)
        job = client.wait(client.submit("train_anomaly", {"data": result.ref, **TRAIN}), timeout=600, poll=0.3)
        assert job.succeeded, job
        assert job.result["metadata"]["training"]["n_train_images"] > 0
        assert len(client.uploads()) == len(before) + 1
        assert not list(layout.upload_store_dir(remote.data_dir).joinpath("partial").iterdir())


def test_drill_engine_killed_mid_upload_and_restarted_leaves_no_corrupt_entry(tmp_path):
    data = tmp_path / "folder"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.bin").write_bytes(os.urandom(3 << 20))
    eng = _remote(tmp_path / "e")
    try:
        chunks = []

        def kill_after_some(done: int, total: int) -> None:
            chunks.append(done)
            if len(chunks) == 20:
                eng.kill()

        with EngineClient(eng.url, TOKEN) as client, pytest.raises(DefectScopeError, match=r"unreachable|broke off"):
            client.upload(data, progress=kill_after_some, chunk_size=1 << 18)
        store = layout.upload_store_dir(eng.data_dir)
        assert _committed(eng.data_dir) == []
        eng.start()  # the same data folder
        for blob in (store / "blobs").iterdir():  # only verified contents were ever published
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        with EngineClient(eng.url, TOKEN) as client:
            assert client.uploads() == []
            result = client.upload(data, chunk_size=1 << 18)
            assert result.bytes_sent < result.bytes  # resumed: what arrived before the kill is not sent again
            assert _tree_hashes(layout.upload_dir(eng.data_dir, result.id) / data.name) == _tree_hashes(data)
            assert [u["id"] for u in client.uploads()] == [result.id]
    finally:
        eng.stop()


def test_cancel_stops_at_a_chunk_boundary_and_the_next_upload_resumes(remote, tmp_path):
    data = tmp_path / "c"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(2 << 20))
    cancel = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= total // 4:
            cancel.set()

    with EngineClient(remote.url, TOKEN) as client:
        with pytest.raises(UploadCancelled, match="cancelled"):
            client.upload(data, progress=progress, cancel=cancel, chunk_size=1 << 16)
        result = client.upload(data, chunk_size=1 << 16)
        assert 0 < result.bytes_sent <= (2 << 20) * 3 // 4 + (1 << 16)


def test_the_cache_evicts_least_recently_used_uploads_never_one_a_job_uses(tmp_path):
    in_use: set[str] = set()
    store = UploadStore(tmp_path / "engine", UploadLimits(), max_bytes=250_000, in_use=lambda: set(in_use))

    def put(name: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.bin").write_bytes(os.urandom(100_000))
        manifest = build_manifest(folder)
        session = store.open_session(manifest.to_json())
        for f in manifest.files:
            store.write_chunk(f.sha256, 0, f.size - 1, f.size, f.local.read_bytes())
        return store.commit(session["session"]).id

    a = put("a")
    time.sleep(0.01)
    b = put("b")
    in_use.add(a)  # a queued job reads a: b, the least recently used of the others, goes
    c = put("c")
    assert [e.id for e in store.entries()] == [a, c] and store.used_bytes() <= 250_000
    assert not layout.upload_dir(tmp_path / "engine", b).exists()
    store.resolve(a)  # used now: c is the least recently used
    in_use.clear()
    d = put("d")
    assert {e.id for e in store.entries()} == {a, d}
    with pytest.raises(DefectScopeError, match="no upload"):
        store.delete(c)
    in_use.add(d)
    with pytest.raises(DefectScopeError, match="used by a queued or running job"):
        store.delete(d)
    store.delete(a)
    assert [e.id for e in store.entries()] == [d]
    assert len(list(store.blobs.iterdir())) == 1  # a's content went with it


def test_a_manifest_names_relative_posix_paths_and_skips_folder_links(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"a")
    (root / "b.txt").write_bytes(b"")
    (root / "loop").symlink_to(root, target_is_directory=True)
    m = build_manifest(root)
    assert [f.path for f in m.files] == ["ds/b.txt", "ds/sub/a.png"] and m.total_bytes == 1  # under its name
    assert build_manifest(root / "sub" / "a.png").files[0].path == "a.png"
    with pytest.raises(DefectScopeError, match="no such file or folder"):
        build_manifest(tmp_path / "missing")
