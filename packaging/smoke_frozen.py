"""Smoke test of the PyInstaller build: the frozen program itself, not the sources.

    .venv/bin/python packaging/smoke_frozen.py dist/defectscope/defectscope

Checks: the CLI answers; `infer` gives the same score as the source tree (one inference path); a frozen engine
runs an eval job in a worker started through the hidden `_worker` subcommand; a training job on this torch-free
build fails with a readable reason; an RGB + 3D model scores its parts in the frozen engine (from the image with
the distilled 3D stand-in, as this build has no open3d, with a note saying so); the GUI opens a dataset and saves
a screenshot, and opens an RGB + 3D dataset with its OpenGL point-cloud view under Xvfb. Writes the "installer"
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

TOKEN = "smoke-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(exe: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env)


def main() -> int:
    exe = Path(sys.argv[1]).resolve()
    work = Path(tempfile.mkdtemp(prefix="ds-frozen-"))
    env = dict(os.environ, DEFECTSCOPE_HOME=str(work / "home"), QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)
    results: dict[str, str] = {}
    size_mb = sum(p.stat().st_size for p in exe.parent.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20

    t = time.perf_counter()
    p = run(exe, "datasets", "formats", env=env)
    assert p.returncode == 0 and "mvtec" in p.stdout, p.stderr
    results["CLI start (`datasets formats`)"] = f"{time.perf_counter() - t:.1f} s"

    # A model and a dataset made with the source tree (training needs torch, which the frozen build leaves out).
    from engine.datasets.demo import generate_demo_dataset
    from engine.jobs import run_job
    from engine.runtime import AnomalyModel

    data = generate_demo_dataset(work / "demo", categories=["washer"], n_train=30, n_test_good=4,
                                 n_test_defect_per_type=2, seed=5)
    model = work / "model"
    run_job("train_anomaly", {"data": str(data), "category": "washer", "out": str(model), "image_size": 128,
                              "bank_size": 256, "device": "cpu"})
    image = next((data / "washer" / "test").rglob("*.png"))
    p = run(exe, "infer", "--model", str(model), "--out", str(work / "infer"), str(image), env=env)
    assert p.returncode == 0, p.stderr
    frozen_score = json.loads((work / "infer" / "scores.json").read_text())["results"][0]["score"]
    source_score = AnomalyModel(model, device="cpu").predict_path(image).score
    assert abs(frozen_score - source_score) < 1e-5, (frozen_score, source_score)
    results["`infer`: frozen vs source score"] = f"{frozen_score:.6f} vs {source_score:.6f}"

    # An RGB + 3D model, trained with the source tree as well.
    from engine.datasets.demo3d import generate_demo3d
    from engine.runtime.multimodal import MultimodalModel

    data3d = generate_demo3d(work / "demo3d", categories=("dome",), size=128, n_train=10, n_validation=3,
                             n_test_good=2, n_test_defect=1)
    model3d = work / "model3d"
    run_job("train_multimodal", {"data": str(data3d), "category": "dome", "out": str(model3d), "image_size": 128,
                                 "geo_grid": 64, "distill_epochs": 15})
    part3d = data3d / "dome" / "test" / "dent" / "rgb" / "000.png"
    source3d = MultimodalModel(model3d).predict(rgb_path=part3d, mode="rgb_with_distilled_geo").score

    token_file = work / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    engine = subprocess.Popen([str(exe), "engine", "serve", "--port", str(port), "--data-dir", str(work / "engine"),
                               "--token-file", str(token_file)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t = time.perf_counter()
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        results["frozen engine ready"] = f"{time.perf_counter() - t:.1f} s"
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        job = c.post("/jobs", json={"kind": "eval", "params": {"model": str(model), "data": str(data),
                                                                 "category": "washer", "device": "cpu"}}).json()["id"]
        train = c.post("/jobs", json={"kind": "train_anomaly", "params": {
            "data": str(data), "category": "washer", "device": "cpu"}}).json()["id"]
        score3d = c.post("/jobs", json={"kind": "score_dataset", "params": {
            "model": str(model3d), "data": str(data3d), "category": "dome", "splits": ["test"],
            "device": "cpu"}}).json()["id"]
        states = {}
        for _ in range(600):
            states = {j: c.get(f"/jobs/{j}").json() for j in (job, train, score3d)}
            if all(s["state"] in ("succeeded", "failed", "cancelled") for s in states.values()):
                break
            time.sleep(0.5)
        assert states[job]["state"] == "succeeded", states[job]
        report = json.loads(c.get(f"/jobs/{job}/artifacts/report.json").text)
        results["eval job in a frozen `_worker`"] = (f"succeeded, image AUROC {report['image_auroc']:.3f}, "
                                                    f"provider {report['provider']}")
        assert states[train]["state"] == "failed", states[train]
        assert "torch" in states[train]["error"], states[train]["error"]
        results["train job on the torch-free build"] = f"failed with: {states[train]['error']}"
        assert states[score3d]["state"] == "succeeded", states[score3d]
        scores3d = json.loads(c.get(f"/jobs/{score3d}/artifacts/predictions/scores.json").text)
        frozen3d = next(v["score"] for k, v in scores3d["items"].items() if k.endswith("dent/rgb/000.png"))
        assert abs(frozen3d - source3d) < 1e-4, (frozen3d, source3d)
        assert scores3d["notes"] and "open3d" in scores3d["notes"][0], scores3d["notes"]
        results["RGB + 3D model scored in the frozen engine"] = (
            f"{scores3d['n_scored']} parts, frozen vs source score {frozen3d:.5f} vs {source3d:.5f}; note: "
            f"{scores3d['notes'][0]}")
    finally:
        engine.terminate()
        engine.wait(30)

    shot = work / "gui.png"
    t = time.perf_counter()
    p = run(exe, "gui", "--dataset", str(data / "washer"), "--no-engine", "--screenshot", str(shot),
            "--quit-after-ms", "6000", env=env)
    assert p.returncode == 0 and shot.is_file() and shot.stat().st_size > 50_000, p.stderr
    results["GUI opens a dataset, screenshot, quits"] = f"{time.perf_counter() - t:.1f} s wall (6 s of it waiting)"

    # The OpenGL point-cloud view needs a GL context: Xvfb + Mesa, as on a PC without a GPU.
    shot3d = work / "gui3d.png"
    p = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", str(exe), "gui", "--dataset",
                        str(data3d / "dome"), "--no-engine", "--screenshot", str(shot3d), "--quit-after-ms", "8000"],
                       capture_output=True, text=True, timeout=300, env={**env, "QT_QPA_PLATFORM": "xcb"})
    assert p.returncode == 0 and shot3d.is_file(), p.stderr
    assert "Traceback" not in p.stderr and "OpenGL" not in p.stderr, p.stderr
    results["GUI opens an RGB + 3D dataset with the point-cloud view (Xvfb)"] = "no error, screenshot saved"

    for k, v in results.items():
        print(f"{k}: {v}")
    section = (f"### Installer build, smoke-tested frozen ({time.strftime('%Y-%m-%d')})\n\n"
               f"Machine: {machine_info()}. Command: `bash packaging/build_installer.sh` (PyInstaller one-folder "
               f"build of the inspection-PC variant: GUI, CLI, engine, ONNX Runtime; no torch), "
               f"{size_mb:.0f} MB on disk.\n\n| check | result |\n|---|---|\n"
               + "".join(f"| {k} | {v} |\n" for k, v in results.items()))
    replace_section(REPO / "benchmarks" / "RESULTS.md", "installer", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
