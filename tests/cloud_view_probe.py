"""Run under Xvfb by tests/test_gui_cloud.py (OpenGL needs a real X server; Qt's offscreen platform has none).

`probe OUT.json`: renders the point-cloud view of a generated RGB + 3D part in every colour mode, picks pixels
both ways, loads a 640k-point cloud. `probe OUT.json DATA_DIR`: the workbench on a generated RGB + 3D set.
Writes what it saw as JSON to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QApplication


def frame(view) -> np.ndarray:
    img = view.gl_view.grabFramebuffer()
    ptr = img.constBits()
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)
    return arr[:, : img.width(), :3].copy()


def main() -> None:
    app = QApplication(sys.argv)
    if len(sys.argv) > 2:  # the workbench check, in its own process (pyqtgraph keeps GL state per process)
        with open(sys.argv[1], "w") as fh:
            json.dump(_main_window(app, Path(sys.argv[2])), fh)
        return
    import pyqtgraph as pg

    pg.setConfigOptions(imageAxisOrder="row-major")  # as the app does: the depth map must not depend on it
    from app.gui.cloud_view import DISPLAY_POINTS, CloudView
    from engine.datasets.demo3d import make_sample

    rgb, xyz, mask = make_sample("dome", "stain", np.random.default_rng(0), 160)
    view = CloudView()
    view.resize(900, 500)
    view.show()
    selected: list[tuple[int, int]] = []
    view.pixel_selected.connect(lambda r, c: selected.append((r, c)))
    import cv2

    anomaly = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 6)  # a smooth map, like a model's
    view.set_cloud(xyz, rgb, anomaly)
    for _ in range(10):
        app.processEvents()
    out: dict = {"modes": {}}
    frames = {}
    for mode in ("height", "rgb", "anomaly"):
        view.mode.setCurrentText(mode)
        app.processEvents()
        f = frame(view)
        frames[mode] = f
        out["modes"][mode] = {"std": float(f.std()),
                              "colours": len(np.unique(f.reshape(-1, 3), axis=0))}
    out["modes_differ"] = bool(np.abs(frames["height"].astype(int) - frames["rgb"].astype(int)).mean() > 1.0)
    # image pixel -> 3D point (marker) and back: a click at the point's screen position picks that pixel
    r, c = 80, 70
    out["select"] = view.select_pixel(r, c)
    app.processEvents()
    k = np.where((view._idx[:, 0] == r) & (view._idx[:, 1] == c))[0]
    sx, sy = view.screen_positions()[k[0]]
    view._on_gl_click(float(sx), float(sy))
    out["picked"] = list(selected[-1]) if selected else None
    out["marker_visible"] = bool(view.marker.visible())
    out["no_point_select"] = view.select_pixel(0, 0) if not np.any(xyz[0, 0] != 0) else "measured"
    # a depth scan as real sensors deliver it: an 8-bit map without background shows as relief (its depth range
    # a fifth of the side, whatever the unit), a 16-bit map's zero background is not drawn as a plane
    import tempfile

    from engine.datasets.pointcloud import display_cloud

    tmp = Path(tempfile.mkdtemp())
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    bump = 10 * np.exp(-((xx - 64) ** 2 + (yy - 64) ** 2) / 1600)
    cv2.imwrite(str(tmp / "n8.png"), np.round(130 + 12 * bump).astype(np.uint8))
    d16 = np.where((np.abs(xx - 64) < 40) & (np.abs(yy - 64) < 40), np.round(3000 - 10 * bump), 0).astype(np.uint16)
    cv2.imwrite(str(tmp / "m16.png"), d16)
    cloud, about = display_cloud(tmp / "n8.png")
    view.set_cloud(cloud, about=about)
    app.processEvents()
    out["depth_std"] = float(frame(view).std())
    out["depth_relief"] = float(np.ptp(view._pos[:, 2]) / np.ptp(view._pos[:, 0]))
    out["depth_about"] = view.info.text()
    cloud, about = display_cloud(tmp / "m16.png")
    view.set_cloud(cloud, about=about)
    app.processEvents()
    out["depth_bg_points"], out["depth_bg_part"] = view.n_displayed, int((d16 > 0).sum())
    # a large cloud is decimated for display
    big = np.zeros((800, 800, 3), np.float32)
    yy, xx = np.mgrid[0:800, 0:800].astype(np.float32)
    big[..., 0], big[..., 1], big[..., 2] = xx, yy, 300 - 20 * np.exp(-((xx - 400) ** 2 + (yy - 400) ** 2) / 8e4)
    t = time.perf_counter()
    view.set_cloud(big)
    app.processEvents()
    out["big_points"] = int((big != 0).any(-1).sum())
    out["big_displayed"] = view.n_displayed
    out["big_limit"] = DISPLAY_POINTS
    out["big_load_s"] = time.perf_counter() - t
    out["big_std"] = float(frame(view).std())
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh)


def _wait(app, cond, timeout: float = 30.0) -> bool:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.01)
    return False


def _main_window(app, data: Path) -> dict:
    """The workbench on an RGB + 3D dataset: the 3D dock appears with the part's cloud, and pixels link."""
    from app.gui.main_window import MainWindow
    from engine.datasets.demo3d import generate_demo3d

    root = generate_demo3d(data, categories=("dome",), size=96, n_train=2, n_validation=1, n_test_good=1,
                           n_test_defect=1)
    w = MainWindow()
    w.resize(1400, 900)
    w.show()
    w.open_dataset(root / "dome")
    res: dict = {"opened": _wait(app, lambda: w.dataset is not None and w.current_key() is not None)}
    res["cloud_shown"] = _wait(app, lambda: w.cloud.view is not None and w.cloud.view.xyz is not None
                               and w.cloud.cloud_key == w.current_key())
    if res["cloud_shown"]:
        res["select"] = w.cloud.select_image_pixel(48, 40)
        res["cloud_selected"] = list(w.cloud.view.selected) if w.cloud.view.selected else None
        w.cloud.view.pixel_selected.emit(30, 20)
        app.processEvents()
        pts = w.cloud.pixel_marker.getData()
        res["image_marker"] = [float(pts[0][0]), float(pts[1][0])]
        f = frame(w.cloud.view)
        res["dock_std"] = float(f.std())
        # scored by the RGB + 3D model (the engine's jobs, run in-process here): the cloud colours by anomaly
        from engine.jobs import run_job

        model = data.parent / "mm_model"
        run_job("train_multimodal", {"data": str(root), "category": "dome", "out": str(model), "image_size": 128,
                                     "geo_grid": 64, "distill_epochs": 3})
        run_job("score_dataset", {"model": str(model), "data": str(root / "dome"), "out": str(data.parent / "pred"),
                                  "device": "cpu"})
        w.models.set_model(model)
        w.scoring.load_predictions(data.parent / "pred")
        res["predictions"] = _wait(app, lambda: w.scoring.predictions is not None)
        key = w.current_key()
        w.scoring.show_heatmap(key)
        res["cloud_anomaly"] = w.cloud.view.anomaly is not None
        w.cloud.view.mode.setCurrentText("anomaly")
        app.processEvents()
        res["anomaly_std"] = float(frame(w.cloud.view).std())
    w.close()
    return res


if __name__ == "__main__":
    main()
