"""Bounded load on a real engine, loopback only: 50 clients polling and streaming while 20 jobs are submitted
and cancelled. Reports failed requests and the latency of GET /jobs/{id}; writes benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/engine_load.py [--clients 50] [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path) -> tuple[Path, Path]:
    """A small demo dataset and a model trained on it, so eval jobs do real work."""
    from engine.datasets.demo import generate_demo_dataset
    from engine.jobs import run_job

    data = generate_demo_dataset(work / "demo", categories=["washer"], n_train=12, n_test_good=4,
                                 n_test_defect_per_type=2)
    model = work / "model"
    run_job("train_anomaly", {"data": str(data), "category": "washer", "out": str(model), "image_size": 128,
                              "bank_size": 512, "device": "cpu"})
    return data, model


async def run_load(url: str, token: str, data: Path, model: Path, n_clients: int, n_jobs: int) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    failures: list[str] = []
    job_ids: list[str] = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=n_clients + 10, max_keepalive_connections=n_clients + 10)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:

        async def poller() -> None:
            while not done.is_set():
                if not job_ids:
                    await asyncio.sleep(0.05)
                    continue
                job_id = job_ids[len(latencies) % len(job_ids)]
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/jobs/{job_id}")
                    if r.status_code != 200:
                        failures.append(f"GET /jobs/{job_id}: {r.status_code}")
                except httpx.HTTPError as exc:
                    failures.append(f"GET /jobs/{job_id}: {exc!r}")
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)

        async def streamer() -> None:
            while not done.is_set():
                if not job_ids:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    async with client.stream("GET", f"/jobs/{job_ids[-1]}/events") as r:
                        if r.status_code != 200:
                            failures.append(f"events: {r.status_code}")
                        async for _ in r.aiter_lines():
                            if done.is_set():
                                break
                except httpx.HTTPError as exc:
                    failures.append(f"events: {exc!r}")

        async def submitter() -> None:
            for i in range(n_jobs):
                r = await client.post("/jobs", json={"kind": "eval", "params": {
                    "model": str(model), "data": str(data), "category": "washer"}})
                if r.status_code != 200:
                    failures.append(f"POST /jobs: {r.status_code} {r.text}")
                    continue
                job_ids.append(r.json()["id"])
                await asyncio.sleep(0.3)
                # cancel most jobs (queued or running); let every fourth run to the end
                if i % 4:
                    c = await client.post(f"/jobs/{job_ids[-1]}/cancel")
                    if c.status_code not in (200, 409):  # 409: it had already finished
                        failures.append(f"cancel: {c.status_code} {c.text}")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                states = [(await client.get(f"/jobs/{j}")).json()["state"] for j in job_ids]
                if all(s in ("succeeded", "failed", "cancelled") for s in states):
                    break
                await asyncio.sleep(0.5)
            done.set()

        n_stream = max(1, n_clients // 5)
        t0 = time.perf_counter()
        await asyncio.gather(submitter(), *(poller() for _ in range(n_clients - n_stream)),
                             *(streamer() for _ in range(n_stream)))
        wall = time.perf_counter() - t0
        final = [(await client.get(f"/jobs/{j}")).json()["state"] for j in job_ids]
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "failures": failures, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()), "wall_s": wall,
            "states": {s: final.count(s) for s in sorted(set(final))}, "clients": n_clients, "jobs": n_jobs,
            "streamers": n_stream}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, model = prepare(work)
        token = "load-test-token-0123456789"
        (work / "token").write_text(token)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(port),
                                 "--data-dir", str(work / "engine"), "--token-file", str(work / "token")],
                                cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            result = asyncio.run(run_load(url, token, data, model, args.clients, args.jobs))
        finally:
            proc.terminate()
            proc.wait(20)
    print(result)
    write_results(Path(args.results), result)
    return 0 if not result["failures"] else 1


def write_results(path: Path, r: dict) -> None:
    section = (
        f"### Engine under load, loopback ({time.strftime('%Y-%m-%d')})\n\n"
        f"Machine: {machine_info()}.\n"
        f"Command: `python benchmarks/engine_load.py` — {r['clients']} concurrent clients ({r['clients'] - r['streamers']} "
        f"polling `GET /jobs/{{id}}`, {r['streamers']} streaming `/events`) while {r['jobs']} eval jobs are submitted "
        f"0.3 s apart and 3 of every 4 cancelled (queued or running), one engine, one worker at a time.\n\n"
        f"| requests `GET /jobs/{{id}}` | failed requests | p50 ms | p99 ms | max ms | wall s | final job states |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {r['requests']} | {len(r['failures'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
        f"| {r['wall_s']:.0f} | {', '.join(f'{k} {v}' for k, v in r['states'].items())} |\n"
    )
    replace_section(path, "engine-load", section)


if __name__ == "__main__":
    sys.exit(main())
