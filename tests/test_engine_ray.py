"""The cluster executor for real: a token-authenticated Ray head on loopback, an engine submitting to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.server import layout
from tests.conftest import DEMO_CATEGORY
from tests.test_engine import TOKEN, EngineProcess, _free_port, wait_for

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'defectscope[cluster]')")

RAY_TOKEN = "ray-cluster-token-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` in its own process group, so teardown stops this cluster and no other."""
    port = _free_port()
    # Ray's unix sockets live under the temp dir, and their paths must stay short (a pytest tmp path is too long).
    temp = Path(tempfile.mkdtemp(prefix="dsray", dir="/tmp"))
    ray_exe = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
    proc = subprocess.Popen(
        [str(ray_exe), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            raise RuntimeError("ray head did not start: " + proc.stdout.read())
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    # SIGKILL the whole group: `ray start --block` spends ~30 s on a graceful SIGTERM, and nothing here needs it.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.rmtree(temp, ignore_errors=True)


def _cluster_cpus_free(address: str) -> float:
    """Asked from a separate process: a Ray driver in the test process would outlive the test."""
    code = (f"import ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR'); "
            "print(ray.available_resources().get('CPU', 0.0))")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return float(out.stdout.strip().splitlines()[-1])


def _ray_engine(tmp_path: Path, address: str, ray_token: str) -> EngineProcess:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ray_token_file = tmp_path / "ray-token"
    ray_token_file.write_text(ray_token)
    return EngineProcess(tmp_path / "engine", token_file,
                         ("--ray-address", address, "--ray-token-file", str(ray_token_file), "--max-jobs", "2")).start()


@pytest.mark.slow
def test_training_runs_on_the_cluster_and_its_model_comes_home(tmp_path, ray_head, demo_data):
    eng = _ray_engine(tmp_path, ray_head, RAY_TOKEN)
    try:
        with eng.client() as c:
            assert c.get("/health").json()["executor"] == f"ray {ray_head}"
            job_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
                "data": str(demo_data), "category": DEMO_CATEGORY, "image_size": 128, "bank_size": 256,
                "device": "auto"}}).json()["id"]
            job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=400)
            assert job["state"] == "succeeded", job
            assert "Ray cluster" in job["placement"]
            events = [line for line in c.get(f"/jobs/{job_id}/events").text.splitlines() if line.startswith("data:")]
            text = "\n".join(events)
            # Progress and logs were relayed from the cluster node while the job ran, not only at the end.
            assert text.count('"type": "progress"') >= 3
            assert "running on cluster node" in text
            assert "no GPU in the Ray cluster: running on a cluster CPU" in c.get(f"/jobs/{job_id}/logs").text
            listed = {a["name"]: a for a in c.get(f"/jobs/{job_id}/artifacts").json()}
            assert "model/model.onnx" in listed and "model/model.json" in listed
            assert '"type": "artifact"' in text and listed["model/model.onnx"]["sha256"] in text
            model_dir = layout.artifact_dir(eng.data_dir, job_id, "model")
            # The result names the engine's copy, not the node's scratch folder.
            assert job["result"]["run_dir"] == str(model_dir)

            # The model trained on the cluster works here, through the one inference path.
            from engine.datasets import load_dataset
            from engine.datasets.imageio import read_image
            from engine.runtime import AnomalyModel

            model = AnomalyModel(model_dir)
            sample = next(s for s in load_dataset(demo_data, category=DEMO_CATEGORY).samples if s.split == "test")
            assert 0.0 <= model.predict(read_image(sample.image_path)).score < 100

            # Cancel on the cluster: the job ends cancelled and the cluster task is gone.
            job_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
                "data": str(demo_data), "category": DEMO_CATEGORY, "image_size": 256, "bank_size": 4096,
                "device": "cpu"}}).json()["id"]
            wait_for(c, job_id, {"running"}, timeout=60)
            deadline = time.time() + 120
            while c.get(f"/jobs/{job_id}").json()["progress"] <= 0 and time.time() < deadline:
                time.sleep(0.3)
            assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
            job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=60)
            assert job["state"] == "cancelled", job
            # ...and the cluster really let go of it: every CPU is free again (a leaked task would hold one).
            deadline = time.time() + 30
            while (free := _cluster_cpus_free(ray_head)) < 2 and time.time() < deadline:
                time.sleep(1)
            assert free == 2, f"{free} of 2 cluster CPUs free after cancel"
    finally:
        eng.stop()


@pytest.mark.slow
def test_a_wrong_cluster_token_fails_the_job_with_the_reason(tmp_path, ray_head, demo_data):
    eng = _ray_engine(tmp_path, ray_head, "not-the-cluster-token-0123456789abcdef")
    try:
        with eng.client() as c:
            job_id = c.post("/jobs", json={"kind": "train_anomaly", "params": {
                "data": str(demo_data), "category": DEMO_CATEGORY, "image_size": 128, "bank_size": 256}}).json()["id"]
            job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=120)
            assert job["state"] == "failed"
            assert f"cannot reach the Ray cluster at {ray_head}" in job["error"]
            assert "token" in job["error"]
    finally:
        eng.stop()
