"""Point-cloud view frame times: a 500k-point organised cloud orbited in the real CloudView (OpenGL).

Run under an X server; on a headless machine through Xvfb (software OpenGL: Mesa llvmpipe, so a GPU desktop
is faster):

    xvfb-run -a -s "-screen 0 1920x1080x24" env QT_QPA_PLATFORM=xcb .venv/bin/python benchmarks/cloud_view_fps.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.anomaly_benchmark import machine_info  # noqa: E402
from benchmarks.results_md import replace_section  # noqa: E402


def main() -> int:
    from PySide6.QtGui import QOpenGLContext
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    from app.gui.cloud_view import DISPLAY_POINTS, CloudView

    side = 708  # 708^2 = 501,264 points
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    xyz = np.stack([xx * 0.1, yy * 0.1, 300 - 15 * np.exp(-((xx - side / 2) ** 2 + (yy - side / 2) ** 2) / 4e4)], -1)
    rgb = np.dstack([(xx % 256), (yy % 256), np.full_like(xx, 128)]).astype(np.uint8)
    view = CloudView()
    view.resize(1280, 800)
    view.show()
    app.processEvents()
    t = time.perf_counter()
    view.set_cloud(xyz.astype(np.float32), rgb)
    app.processEvents()
    load_s = time.perf_counter() - t
    times = []
    for i in range(60):
        view.gl_view.setCameraPosition(azimuth=-90 + 3 * i)
        t = time.perf_counter()
        view.gl_view.repaint()
        app.processEvents()
        times.append(time.perf_counter() - t)
    ms = np.array(times[5:]) * 1000
    ctx = view.gl_view.context() or QOpenGLContext.currentContext()
    renderer = "unknown"
    if ctx is not None:
        view.gl_view.makeCurrent()
        from OpenGL import GL

        renderer = GL.glGetString(GL.GL_RENDERER).decode()
    text = "\n".join([
        "## Point-cloud view: frame time at 500k points", "",
        f"Machine: {machine_info()}; OpenGL renderer: {renderer}. Run {time.strftime('%Y-%m-%d')} with "
        "`benchmarks/cloud_view_fps.py` (1280 x 800 window).", "",
        f"| points in the cloud | displayed (decimation limit {DISPLAY_POINTS:,}) | load + first colouring | "
        "frame time median / p90 (orbiting) |", "|---|---|---|---|",
        f"| {side * side:,} | {view.n_displayed:,} (grid stride {view.stride}) | {1000 * load_s:.0f} ms | "
        f"{np.median(ms):.1f} / {np.percentile(ms, 90):.1f} ms ({1000 / np.median(ms):.0f} fps) |", ""])
    print(text)
    if "--no-results" not in sys.argv:
        replace_section(REPO / "benchmarks" / "RESULTS.md", "cloud-view", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
