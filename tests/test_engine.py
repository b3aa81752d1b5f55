"""The engine process for real: started on loopback, jobs run in worker processes, faults and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.server import layout
from tests.conftest import DEMO_CATEGORY

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineProcess:
    def __init__(self, data_dir: Path, token_file: Path, extra: tuple[str, ...] = (), scheme: str = "http") -> None:
        self.data_dir, self.token_file, self.extra = data_dir, token_file, extra
        self.port = _free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify: bool | ssl.SSLContext = True
        self.proc: subprocess.Popen | None = None

    def start(self) -> EngineProcess:
        cmd = [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--token-file", str(self.token_file), *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("engine did not start: " + (self.proc.stdout.read() if self.proc.stdout else ""))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=self.verify)


@pytest.fixture
def engine_proc(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(tmp_path / "engine", token_file).start()
    yield eng
    eng.stop()


def wait_for(client: httpx.Client, job_id: str, states: set[str], timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_every_route_but_health_needs_the_token(engine_proc):
    assert engine_proc.client(None).get("/health").json()["status"] == "ok"
    for token in (None, "wrong-token-wrong-token"):
        c = engine_proc.client(token)
        assert c.get("/jobs").status_code == 401
        assert c.post("/jobs", json={"kind": "eval", "params": {}}).status_code == 401
        assert c.get("/jobs/abc/artifacts").status_code == 401
    assert "/jobs/{job_id}/events" in engine_proc.client().get("/openapi.json").json()["paths"]


def test_eval_job_runs_in_a_worker_and_returns_checksummed_artifacts(engine_proc, trained_model, demo_data):
    c = engine_proc.client()
    job_id = c.post("/jobs", json={"kind": "eval", "params": {
        "model": str(trained_model), "data": str(demo_data), "category": DEMO_CATEGORY}}).json()["id"]
    job = wait_for(c, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["result"]["image_auroc"] > 0.5
    arts = c.get(f"/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in arts] == ["report.json"]
    body = c.get(f"/jobs/{job_id}/artifacts/report.json")
    assert hashlib.sha256(body.content).hexdigest() == arts[0]["sha256"] == body.headers["x-checksum-sha256"]
    assert json.loads(body.content)["n_test"] == job["result"]["n_test"]
    stream = c.get(f"/jobs/{job_id}/events").text
    types = [json.loads(line[6:])["type"] for line in stream.splitlines() if line.startswith("data: {\"t\"")]
    assert types[0] == "started" and "progress" in types and types[-1] == "done"
    assert "event: end" in stream
    assert [j["id"] for j in c.get("/jobs").json()] == [job_id]


def test_bad_requests_get_clear_4xx_and_write_nothing(engine_proc, tmp_path):
    c = engine_proc.client()
    assert c.post("/jobs", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    r = c.post("/jobs", json={"kind": "nope", "params": {}})
    assert r.status_code == 422 and "unknown job kind" in r.json()["detail"]
    r = c.post("/jobs", json={"kind": "train_anomaly", "params": {"data": "x", "image_size": "big"}})
    assert r.status_code == 422 and "image_size" in r.json()["detail"]
    r = c.post("/jobs", json={"kind": "train_anomaly", "params": {"data": "x", "out": "/etc"}})
    assert r.status_code == 422 and "params.out" in r.json()["detail"]
    assert c.get("/jobs/doesnotexist").status_code == 404
    assert c.get("/jobs").json() == []


def test_artifact_names_cannot_escape_the_job_folder(engine_proc, trained_model, demo_data):
    c = engine_proc.client()
    job_id = c.post("/jobs", json={"kind": "eval", "params": {
        "model": str(trained_model), "data": str(demo_data), "category": DEMO_CATEGORY}}).json()["id"]
    wait_for(c, job_id, {"succeeded", "failed"})
    for name in ("..%2F..%2Fengine.sqlite", "%2E%2E/%2E%2E/engine.sqlite", "..%2Fjob.json"):
        r = c.get(f"/jobs/{job_id}/artifacts/{name}")
        assert r.status_code in (400, 404), (name, r.status_code)
        assert b"SQLite" not in r.content


@pytest.mark.slow
def test_worker_killed_mid_training_fails_its_job_and_the_engine_keeps_serving(engine_proc, demo_data):
    c = engine_proc.client()
    job_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
        "data": str(demo_data), "category": DEMO_CATEGORY, "device": "cpu"}}).json()["id"]
    wait_for(c, job_id, {"running"})
    events = layout.job_folder(engine_proc.data_dir, job_id).events
    deadline = time.time() + 60
    while time.time() < deadline and '"progress"' not in (events.read_text() if events.exists() else ""):
        time.sleep(0.2)
    pid = json.loads(events.read_text().splitlines()[0])["pid"]
    os.kill(pid, signal.SIGKILL)
    job = wait_for(c, job_id, {"failed", "succeeded"})
    assert job["state"] == "failed" and "signal 9" in job["error"], job
    assert c.get("/health").status_code == 200
    # a new job still runs
    cancel_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
        "data": str(demo_data), "category": DEMO_CATEGORY, "device": "cpu"}}).json()["id"]
    wait_for(c, cancel_id, {"running"})
    assert c.post(f"/jobs/{cancel_id}/cancel").json()["cancelling"] is True
    assert wait_for(c, cancel_id, {"cancelled", "failed", "succeeded"}, timeout=60)["state"] == "cancelled"


@pytest.mark.slow
def test_engine_killed_mid_job_restarts_with_every_job_listed_and_none_stuck(tmp_path, trained_model, demo_data):
    from engine.server.store import JobStore

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(tmp_path / "engine", token_file).start()
    c = eng.client()
    done_id = c.post("/jobs", json={"kind": "eval", "params": {
        "model": str(trained_model), "data": str(demo_data), "category": DEMO_CATEGORY}}).json()["id"]
    wait_for(c, done_id, {"succeeded"})
    before = c.get(f"/jobs/{done_id}/artifacts").json()
    run_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
        "data": str(demo_data), "category": DEMO_CATEGORY, "device": "cpu"}}).json()["id"]
    wait_for(c, run_id, {"running"})
    eng.kill()
    eng = EngineProcess(tmp_path / "engine", token_file)
    eng.port = int(c.base_url.port)
    eng.url = str(c.base_url).rstrip("/")
    eng.start()
    try:
        c2 = eng.client()
        jobs = {j["id"]: j for j in c2.get("/jobs").json()}
        assert set(jobs) == {done_id, run_id}
        assert jobs[done_id]["state"] == "succeeded"
        assert jobs[run_id]["state"] == "failed" and "restarted" in jobs[run_id]["error"]
        assert c2.get(f"/jobs/{done_id}/artifacts").json() == before  # finished artifacts intact (checksums)
    finally:
        eng.stop()
    assert JobStore(layout.database_file(tmp_path / "engine")).integrity_ok()
    # the orphaned worker noticed the engine was gone and stopped instead of training on for nobody
    events = layout.job_folder(tmp_path / "engine", run_id).events
    deadline = time.time() + 15
    while time.time() < deadline and "engine went away" not in events.read_text():
        time.sleep(0.2)
    assert "engine went away" in events.read_text().splitlines()[-1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def test_jobs_cli_submits_follows_and_downloads_verified_artifacts(engine_proc, trained_model, demo_data, tmp_path):
    common = ["jobs", "--engine", engine_proc.url, "--token-file", str(engine_proc.token_file)]
    proc = _cli(*common, "submit", "eval", "--param", f"model={trained_model}", "--param", f"data={demo_data}",
                "--param", f"category={DEMO_CATEGORY}", "--wait")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[0]
    assert f"{job_id} succeeded" in proc.stdout and "100.0%" in proc.stderr
    listing = _cli(*common, "list")
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    dl = _cli(*common, "artifacts", job_id, "--download", str(tmp_path / "dl"))
    assert dl.returncode == 0, dl.stderr
    assert json.loads((tmp_path / "dl" / "report.json").read_text())["n_test"] > 0
    shown = json.loads(_cli(*common, "show", job_id).stdout)
    assert shown["state"] == "succeeded"


def test_jobs_cli_errors_are_one_clear_line(engine_proc, tmp_path):
    bad_token = tmp_path / "bad"
    bad_token.write_text("x" * 20)
    for args, fragment in (
        (["--engine", f"http://127.0.0.1:{_free_port()}", "list"], "unreachable"),
        (["--engine", engine_proc.url, "--token-file", str(bad_token), "list"], "refused the token"),
        (["--engine", engine_proc.url, "--token-file", str(engine_proc.token_file), "show", "nope"], "no job"),
        (["--engine", engine_proc.url, "--token-file", str(engine_proc.token_file), "submit", "eval",
          "--param", "model"], "KEY=VALUE"),
    ):
        proc = _cli("jobs", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert fragment in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_inputs_outside_the_data_roots_are_refused(tmp_path, trained_model, demo_data):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(tmp_path / "engine", token_file, ("--data-root", str(demo_data))).start()
    try:
        c = eng.client()
        r = c.post("/jobs", json={"kind": "eval", "params": {"model": str(trained_model), "data": str(demo_data)}})
        assert r.status_code == 403 and r.json()["field"] == "params.model" and "data roots" in r.json()["detail"]
        r = c.post("/jobs", json={"kind": "train_anomaly", "params": {"data": str(demo_data / ".." / "..")}})
        assert r.status_code == 403 and r.json()["field"] == "params.data"
        assert c.get("/jobs").json() == []
        # The engine's own results are inputs too (a unified model's next step resumes from an earlier job).
        own = layout.artifact_dir(tmp_path / "engine", "earlier", "model")
        r = c.post("/jobs", json={"kind": "eval", "params": {"model": str(own), "data": str(demo_data)}})
        assert r.status_code == 200, r.text
    finally:
        eng.stop()


def test_tls_with_a_generated_certificate_and_refusal_off_loopback_without_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    eng = EngineProcess(tmp_path / "engine", token_file, ("--tls-self-signed",), scheme="https")
    eng.verify = False  # until the certificate exists; then pinned below
    eng.start()
    try:
        cert = layout.tls_dir(tmp_path / "engine") / "cert.pem"
        assert cert.is_file() and (layout.tls_dir(tmp_path / "engine") / "key.pem").stat().st_mode & 0o077 == 0
        eng.verify = ssl.create_default_context(cafile=str(cert))
        assert eng.client().get("/jobs").json() == []  # verified against the pinned certificate
        with pytest.raises(httpx.HTTPError):
            httpx.get(eng.url + "/health", timeout=5)  # not trusted without the pin
        proc = _cli("jobs", "--engine", eng.url, "--token-file", str(token_file), "--tls-ca", str(cert), "list")
        assert proc.returncode == 0, proc.stderr
    finally:
        eng.stop()
    proc = _cli("engine", "serve", "--host", "0.0.0.0", "--port", str(_free_port()), "--data-dir", str(tmp_path / "e2"))
    assert proc.returncode == 2 and "without --token-file" in proc.stderr


def test_gpu_placement_limits_jobs_per_gpu_and_falls_back_to_cpu():
    from engine.server.gpus import Gpu, GpuPool

    pool = GpuPool([Gpu(0, "A", 80_000), Gpu(1, "B", 80_000)], jobs_per_gpu=1)
    first, second = pool.acquire("cuda"), pool.acquire("auto")
    assert {first.gpu.index, second.gpu.index} == {0, 1}
    assert first.env() == {"CUDA_VISIBLE_DEVICES": str(first.gpu.index)}
    assert pool.acquire("cuda") is None  # both GPUs busy: the job waits
    assert pool.acquire("cpu").env() == {"CUDA_VISIBLE_DEVICES": ""}
    pool.release(first)
    assert pool.acquire("cuda").gpu.index == first.gpu.index
    none = GpuPool([]).acquire("cuda")
    assert none.device == "cpu" and "no GPU" in none.note


def test_a_cuda_job_on_an_engine_without_gpu_runs_on_cpu_and_says_so(engine_proc, demo_data):
    from engine.server.gpus import detect_gpus

    if detect_gpus():
        pytest.skip("this machine has a GPU: the CPU fallback is not what happens here")
    c = engine_proc.client()
    job_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
        "data": str(demo_data), "category": DEMO_CATEGORY, "device": "cuda", "image_size": 128,
        "bank_size": 256}}).json()["id"]
    job = wait_for(c, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded", job
    assert "no GPU on this engine: running on CPU" in job["placement"]
    assert job["result"]["metadata"]["training"]["device"] == "cpu"
    assert {a["name"] for a in c.get(f"/jobs/{job_id}/artifacts").json()} >= {"model/model.onnx", "model/model.json"}


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> bytes:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path.read_bytes()


def test_dataset_upload_extracts_safely_and_refuses_malicious_archives(engine_proc, demo_data, tmp_path):
    c = engine_proc.client()
    members = {f"ds/{DEMO_CATEGORY}/train/good/{p.name}": p.read_bytes()
               for p in sorted((demo_data / DEMO_CATEGORY / "train" / "good").glob("*.png"))[:3]}
    r = c.post("/uploads", content=_zip(tmp_path / "ok.zip", members))
    assert r.status_code == 200, r.text
    folder = Path(r.json()["path"])
    assert folder.is_relative_to(layout.uploads_dir(engine_proc.data_dir))
    assert sorted(p.name for p in (folder / "ds" / DEMO_CATEGORY / "train" / "good").iterdir()) == sorted(
        Path(m).name for m in members)
    bad = {
        "slip.zip": ({"ok.txt": b"x", "../../escaped.txt": b"evil"}, None, "../../escaped.txt"),
        "abs.zip": ({"/tmp/defectscope_abs_escape.txt": b"evil"}, None, "/tmp/defectscope_abs_escape.txt"),
        "link.zip": ({"a.txt": b"x"}, "link_to_passwd", "symbolic links"),
    }
    for name, (content, link, fragment) in bad.items():
        r = c.post("/uploads", content=_zip(tmp_path / name, content, link))
        assert r.status_code == 400 and fragment in r.json()["detail"], (name, r.text)
    r = c.post("/uploads", content=b"definitely not a zip")
    assert r.status_code == 400 and "not a zip" in r.json()["detail"]
    assert not (engine_proc.data_dir / "escaped.txt").exists() and not (engine_proc.data_dir.parent / "escaped.txt").exists()
    assert not Path("/tmp/defectscope_abs_escape.txt").exists()
    assert [p.name for p in layout.uploads_dir(engine_proc.data_dir).iterdir()] == [folder.name]  # nothing half-written


def test_upload_size_limits(tmp_path):
    from fastapi.testclient import TestClient

    from engine.server.api import Engine, create_app
    from engine.server.uploads import UploadLimits

    eng = Engine(tmp_path / "engine", TOKEN)
    eng.upload_limits = UploadLimits(max_archive_bytes=50_000, max_member_bytes=1_000, max_total_bytes=3_000)
    try:
        client = TestClient(create_app(eng), headers={"Authorization": f"Bearer {TOKEN}"})
        r = client.post("/uploads", content=_zip(tmp_path / "big_member.zip", {"big.bin": b"\0" * 5_000}))
        assert r.status_code == 400 and "big.bin" in r.json()["detail"]
        many = {f"f{i}.bin": b"\1" * 900 for i in range(5)}
        r = client.post("/uploads", content=_zip(tmp_path / "bomb.zip", many))
        assert r.status_code == 400 and "unpacks to more than" in r.json()["detail"]
        r = client.post("/uploads", content=b"\0" * 60_000)
        assert r.status_code == 413
        assert [p for p in layout.uploads_dir(tmp_path / "engine").iterdir()] == []
    finally:
        eng.executor.shutdown()


def test_engine_stops_when_its_parent_app_dies_and_one_engine_holds_a_data_dir(tmp_path):
    """A GUI that crashes must not leave its engine (and its workers) running; two engines never share a folder."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    eng = EngineProcess(tmp_path / "engine", token_file, ("--parent-pid", str(parent.pid))).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(_free_port()), "--data-dir",
             str(tmp_path / "engine"), "--token-file", str(token_file)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert second.returncode == 2
        assert "another engine is already serving this data folder" in second.stderr
        parent.kill()
        parent.wait()
        eng.proc.wait(timeout=30)  # gone by itself, without being told
        assert "parent process" in eng.proc.stdout.read()
    finally:
        parent.kill()
        eng.kill()
