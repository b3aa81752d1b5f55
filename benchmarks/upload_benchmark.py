"""Uploads to an engine on loopback: ../shared/data/magnetic_tile (about 1,350 images) the first time, again after
changing 10 images (only those travel), and once more unchanged. Writes its section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/upload_benchmark.py [--data ../shared/data/magnetic_tile] [--changed 10]

The dataset is copied to a temporary folder first (the changes must not touch the shared data); each run starts
with an empty engine and an empty client hash cache, so the first upload includes hashing every file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402

TOKEN = "upload-benchmark-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(work: Path) -> tuple[subprocess.Popen, str]:
    token_file = work / "token"
    token_file.write_text(TOKEN)
    root = work / "engine_root"
    root.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "engine", "serve", "--port", str(port), "--data-dir", str(work / "engine"),
         "--token-file", str(token_file), "--data-root", str(root)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("engine did not start")


def change_images(folder: Path, n: int) -> list[Path]:
    """n images get a few trailing bytes: a new content (and hash) each, still a readable image."""
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    step = max(1, len(images) // n)
    changed = images[::step][:n]
    for p in changed:
        p.write_bytes(p.read_bytes() + b"benchmark-change")
    return changed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "magnetic_tile"))
    ap.add_argument("--changed", type=int, default=10)
    ap.add_argument("--big-mb", type=int, default=256)
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    src = Path(args.data)
    if not src.is_dir():
        print(f"{src}: not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="defectscope-upload-bench-") as tmp:
        work = Path(tmp)
        os.environ["DEFECTSCOPE_HOME"] = str(work / "home")  # an empty client hash cache
        from engine.client import EngineClient

        data = work / src.name
        shutil.copytree(src, data, symlinks=False)
        proc, url = start_engine(work)
        rows = []
        try:
            with EngineClient(url, TOKEN, timeout=120) as client:
                for label in ("first upload", f"after changing {args.changed} images", "unchanged"):
                    if label.startswith("after"):
                        change_images(data, args.changed)
                    r = client.upload(data)
                    rows.append((label, r))
                    print(f"{label}: {r}", flush=True)
                cache = client.upload_cache()
                # One large file: the chunk path alone, without the per-file round trips of small images.
                big = work / "big"
                big.mkdir()
                (big / "volume.bin").write_bytes(os.urandom(args.big_mb << 20))
                r = client.upload(big)
                rows.append((f"one {args.big_mb} MiB file", r))
                print(f"big: {r}", flush=True)
        finally:
            proc.terminate()
            proc.wait(15)
    lines = [
        f"### Uploads to an engine on loopback: magnetic tile ({date.today().isoformat()})",
        "",
        f"Machine: {machine_info()}.",
        "Command: `python benchmarks/upload_benchmark.py` — a copy of `../shared/data/magnetic_tile` uploaded with "
        "`EngineClient.upload` (8 MiB chunks, SHA-256 per file) to a fresh engine started with `--data-root` its "
        "own folder only; the client's hash cache starts empty. Seconds include hashing, the session, every chunk "
        "and the commit (hard links into the upload's folder).",
        "",
        "| upload | files | MB in folder | files hashed | blobs sent | MB sent | seconds | MB/s sent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        rate = f"{r.bytes_sent / 1e6 / r.seconds:.1f}" if r.bytes_sent else "-"
        lines.append(f"| {label} | {r.files} | {r.bytes / 1e6:.1f} | {r.hashed_files} | {r.blobs_sent} | "
                     f"{r.bytes_sent / 1e6:.2f} | {r.seconds:.2f} | {rate} |")
    first = rows[0][1]
    lines += ["", f"Engine cache after the three dataset uploads: {len(cache['uploads'])} uploads, "
              f"{cache['used_bytes'] / 1e6:.1f} MB on disk (the files the uploads share are stored once).", "",
              f"Reading (uploads): the folder holds {first.files} files (images and their masks). A second upload "
              "after changing a few images hashes and sends only those (the others' hashes come from the client's "
              "cache by path, size and modification time). Small files cost one request each, so the first upload "
              "of many small images is bound by per-request time, not bandwidth; the large file shows the chunk "
              "path's throughput (hashing on both sides included).", ""]
    replace_section(Path(args.results), "uploads", "\n".join(lines))
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
