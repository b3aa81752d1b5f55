"""How responsive the workbench stays: the real main window, offscreen, with a real local engine.

Measures (a 10 ms QTimer's longest gap = the longest event-loop stall):
  1. stepping through 12 JPEGs of 6000 x 4500 while a training job runs in the engine;
  2. opening an 8000 x 8000 JPEG in the image view, then zoom and pan repaints;
  3. a 10,000-image dataset in the browser: set-up, a filter, sort by score, thumbnails requested.
Writes the "gui" section of benchmarks/RESULTS.md.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui_responsiveness.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("DEFECTSCOPE_HOME", tempfile.mkdtemp(prefix="ds-gui-bench-"))

from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402


class StallMeter:
    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def __enter__(self) -> StallMeter:
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.stop()

    @property
    def worst_ms(self) -> float:
        return max(self.gaps) * 1000 if self.gaps else 0.0

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.gaps, 99) * 1000) if self.gaps else 0.0


def spin(ms: int, until: Callable[[], bool] | None = None) -> None:
    """Run the event loop for `ms` (or until `until()` holds) through a QEventLoop instance."""
    loop = QEventLoop()
    clock = QElapsedTimer()
    clock.start()
    while clock.elapsed() < ms:
        if until is not None and until():
            return
        QTimer.singleShot(10, loop.quit)
        loop.exec()


def large_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (size[1] // 12, size[0] // 12, 3), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(np.roll(base, i * 7, axis=1)).resize(size, Image.Resampling.BILINEAR)
        img.save(folder / f"{i:02d}.jpg", quality=90)


def bench_browse_while_training(work: Path) -> dict:
    from app.gui.engine_link import EngineSettings
    from app.gui.main_window import MainWindow
    from engine.datasets.demo import generate_demo_dataset

    demo = generate_demo_dataset(work / "demo", categories=["washer"], n_train=60, seed=3)
    big = work / "big"
    large_jpegs(big / "good", 12, (6000, 4500))
    w = MainWindow()
    w.show()
    w.link.start(EngineSettings(mode="local"))
    spin(60_000, lambda: w.link.state == "connected")
    job: list[str] = []
    w.link.submit("train_anomaly", {"data": str(demo / "washer"), "image_size": 256, "device": "cpu"},
                  on_done=job.append)
    loaded: list[str] = []
    w.dataset_loaded.connect(loaded.append)
    w.open_dataset(big)
    spin(30_000, lambda: bool(loaded))
    spin(60_000, lambda: any(j.state == "running" for j in w.engine.jobs_panel.jobs()))
    shown: list[str] = []
    w.image_view.image_shown.connect(shown.append)
    with StallMeter() as meter:
        for _ in range(11):
            spin(400)
            w.next_image()
        last = w.current_key()
        spin(60_000, lambda: last in shown)
    running = any(j.state == "running" for j in w.engine.jobs_panel.jobs())
    w.close()
    return {"worst_ms": meter.worst_ms, "p99_ms": meter.p99_ms, "ticks": len(meter.gaps),
            "full_images_shown": len(set(shown)), "training_running": running}


def bench_8k_view(work: Path) -> dict:
    from app.gui.image_view import ImageView

    path = work / "8k.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (500, 500, 3), dtype=np.uint8)).resize(
        (8000, 8000), Image.Resampling.BILINEAR).save(path, quality=90)
    view = ImageView()
    view.resize(1200, 900)
    view.show()
    shown: list[str] = []
    view.image_shown.connect(shown.append)
    t0 = time.perf_counter()
    with StallMeter() as meter:
        view.load(path, "8k")
        spin(30_000, lambda: "8k" in shown)
    load_s = time.perf_counter() - t0
    repaint = []
    vb = view.view_box
    for i in range(10):
        t = time.perf_counter()
        vb.scaleBy((0.7, 0.7)) if i < 5 else vb.translateBy((200, 150))
        view.grab()
        repaint.append((time.perf_counter() - t) * 1000)
    view.close()
    return {"load_s": load_s, "stall_ms": meter.worst_ms, "repaint_worst_ms": max(repaint),
            "repaint_median_ms": float(np.median(repaint))}


def bench_10k_browser(work: Path) -> dict:
    from app.gui.browser import BrowserWidget
    from engine.datasets.types import Sample

    files = work / "thumbs"
    files.mkdir()
    for i in range(8):
        Image.fromarray(np.full((256, 256, 3), 30 * i, np.uint8)).save(files / f"{i}.png")
    samples = [Sample(files / f"{i % 8}.png", split="test", label="good" if i % 5 else "defective",
                      defect_type="good" if i % 5 else "scratch") for i in range(10_000)]
    # 10k distinct keys: the same 8 files reached through 10k distinct relative paths would need 10k files;
    # distinct names are what the model keys on, so give each row its own path (most do not exist).
    samples = [Sample(files / f"sub{i // 1000}" / f"img{i}.png", split=s.split, label=s.label,
                      defect_type=s.defect_type) for i, s in enumerate(samples)]
    w = BrowserWidget()
    w.resize(900, 700)
    w.show()
    t = time.perf_counter()
    w.set_dataset(work, samples)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    w.proxy.set_label("defective")
    filter_s = time.perf_counter() - t
    w.proxy.set_label(None)
    rng = np.random.default_rng(0)
    keys = w.model.keys()
    w.model.set_scores(dict(zip(keys, rng.random(len(keys)).tolist(), strict=True)))
    t = time.perf_counter()
    w.set_sort_mode("score")
    sort_s = time.perf_counter() - t
    spin(1500)
    requested = w.cache.stats["requests"]
    w.close()
    return {"setup_s": setup_s, "filter_s": filter_s, "sort_s": sort_s, "thumb_requests": requested}


def main() -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp(prefix="ds-gui-"))
    browse = bench_browse_while_training(work)
    print("browse while training:", browse, flush=True)
    view = bench_8k_view(work)
    print("8k view:", view, flush=True)
    big = bench_10k_browser(work)
    print("10k browser:", big, flush=True)
    app.processEvents()
    section = (
        f"### Workbench responsiveness ({time.strftime('%Y-%m-%d')})\n\n"
        f"Machine: {machine_info()}; Qt offscreen. Command: `python benchmarks/gui_responsiveness.py`. A stall is "
        f"the longest gap between ticks of a 10 ms timer on the GUI thread (target < 200 ms).\n\n"
        f"| scenario | longest stall ms | other figures |\n|---|---|---|\n"
        f"| stepping through 12 JPEGs of 6000 x 4500 every 0.4 s while a training job runs in the local engine "
        f"| {browse['worst_ms']:.0f} | p99 gap {browse['p99_ms']:.0f} ms over {browse['ticks']} ticks; "
        f"{browse['full_images_shown']} shown in full (stale loads dropped); training running at the end: "
        f"{browse['training_running']} |\n"
        f"| opening an 8000 x 8000 JPEG in the image view | {view['stall_ms']:.0f} | full resolution on screen "
        f"after {view['load_s']:.2f} s; zoom/pan repaint median {view['repaint_median_ms']:.1f} ms, worst "
        f"{view['repaint_worst_ms']:.1f} ms |\n"
        f"| 10,000-image dataset in the browser | - | set-up {big['setup_s'] * 1000:.0f} ms, filter "
        f"{big['filter_s'] * 1000:.0f} ms, sort by score {big['sort_s'] * 1000:.0f} ms; thumbnail requests "
        f"{big['thumb_requests']} (only the visible rows) |\n"
    )
    replace_section(REPO / "benchmarks" / "RESULTS.md", "gui", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
