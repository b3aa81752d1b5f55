"""ImageView with real widgets and real image files: async loading, stale loads, errors, overlays, 8k images.

Screenshots go to $DEFECTSCOPE_TEST_ARTIFACTS when set (else the test's tmp_path) for a human look.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

import shiboken6
from PySide6.QtCore import QPoint, QPointF, QRectF, QTimer
from PySide6.QtGui import QColor

from app.gui import image_view as iv
from app.gui.image_view import ImageView
from engine.datasets.types import Box, Polygon

LOAD_TIMEOUT_MS = 20_000


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("DEFECTSCOPE_TEST_ARTIFACTS")
    out = Path(root) / "image_view" if root else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def view(qtbot) -> ImageView:
    widget = ImageView()
    qtbot.addWidget(widget)
    widget.resize(900, 700)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB test picture (cheap even at 8k: broadcasting, no mgrid)."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = (np.arange(w, dtype=np.uint32) * 255 // max(w - 1, 1)).astype(np.uint8)[None, :]
    img[..., 1] = (np.arange(h, dtype=np.uint32) * 255 // max(h - 1, 1)).astype(np.uint8)[:, None]
    img[..., 2] = 90
    return img


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def _save(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(rgb).save(path)
    return path


def _blobs(size: int = 1024) -> np.ndarray:
    """Two Gaussian blobs; at size 1024: peak 0.9 at (x=300, y=300) and peak 0.6 at (x=750, y=650)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) * (1024 / size))
    high = 0.9 * np.exp(-((xx - 300) ** 2 + (yy - 300) ** 2) / (2 * 70.0**2))
    low = 0.6 * np.exp(-((xx - 750) ** 2 + (yy - 650) ** 2) / (2 * 90.0**2))
    return np.maximum(high, low)


def _screen_color(view: ImageView, x: float, y: float) -> QColor:
    """The colour the widget shows at image pixel (x, y), read from a real render of the widget."""
    graphics = view.view_box.scene().views()[0]
    scene_pos = view.view_box.mapViewToScene(QPointF(x, y))
    widget_pos = graphics.mapTo(view, graphics.mapFromScene(scene_pos))
    return view.grab().toImage().pixelColor(widget_pos)


def _wait_for_pool() -> None:
    """Let every queued decode finish (their results are then delivered by the next event processing)."""
    _, pool = iv._loader()
    assert pool.waitForDone(LOAD_TIMEOUT_MS)


# ----------------------------------------------------------------------------------------------- loading


def test_async_load_shows_image(qtbot, view: ImageView, tmp_path: Path, artifacts: Path) -> None:
    rgb = _gradient(480, 640)
    path = _save(tmp_path / "part.png", rgb)

    with qtbot.waitSignal(view.image_shown, timeout=LOAD_TIMEOUT_MS) as shown:
        started = time.perf_counter()
        view.load(path, "part")
        returned_after = time.perf_counter() - started
    assert shown.args == ["part"]
    assert returned_after < 0.05, "load() must return at once; decoding happens on a worker"
    assert view.key == "part"
    assert view.image_size == (640, 480)
    r, g, b = rgb[400, 600]
    assert view.pixel_info(600.5, 400.5) == f"x 600  y 400   RGB {r} {g} {b}"
    assert view.pixel_info(-1, 3) == "" and view.pixel_info(640, 3) == ""

    # What the user sees: the bottom-right of the picture is drawn bottom-right (row 0 on top).
    seen = _screen_color(view, 620, 460)
    assert abs(seen.red() - int(rgb[460, 620, 0])) <= 12 and abs(seen.green() - int(rgb[460, 620, 1])) <= 12
    view.grab().save(str(artifacts / "loaded.png"))


def test_stale_load_is_dropped(qtbot, view: ImageView, tmp_path: Path) -> None:
    slow = _save(tmp_path / "slow.jpg", _solid(3000, 3000, (220, 30, 30)))  # preview + full decode
    fast = _save(tmp_path / "fast.png", _solid(200, 300, (30, 30, 220)))
    shown: list[str] = []
    previews: list[str] = []
    view.image_shown.connect(shown.append)
    view.preview_shown.connect(previews.append)

    with qtbot.waitSignal(view.image_shown, timeout=LOAD_TIMEOUT_MS, check_params_cb=lambda k: k == "fast"):
        view.load(slow, "slow")
        view.load(fast, "fast")  # the user moved on before "slow" arrived
    _wait_for_pool()
    qtbot.wait(100)  # deliver anything the slow job still posted

    assert shown == ["fast"] and "slow" not in previews
    assert view.key == "fast" and view.image_size == (300, 200)
    assert "RGB 30 30 220" in view.pixel_info(10, 10)


def test_view_deleted_during_load_is_safe(qtbot, tmp_path: Path) -> None:
    path = _save(tmp_path / "big.jpg", _gradient(3000, 3000))
    widget = ImageView()
    widget.show()
    widget.load(path, "gone")
    shiboken6.delete(widget)  # the window closes while the worker still decodes
    del widget
    _wait_for_pool()
    qtbot.wait(100)  # the relay receives the late results and must drop them quietly (pytest-qt fails on errors)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("broken.png", b"this is not a PNG at all", "not a readable image"),
        ("empty.jpg", b"", "not a readable image"),
        ("cut.jpg", None, "cannot decode"),
        ("missing.png", "missing", "not found"),
    ],
)
def test_unreadable_file_reports_without_raising(
    qtbot, view: ImageView, tmp_path: Path, artifacts: Path, name: str, content: bytes | str | None, expected: str
) -> None:
    path = tmp_path / name
    if content is None:  # a real JPEG cut in half: header fine, pixels missing
        full = _save(tmp_path / "whole.jpg", _gradient(400, 400)).read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    failures: list[tuple[str, str]] = []
    view.load_failed.connect(lambda key, reason: failures.append((key, reason)))

    with qtbot.waitSignal(view.load_failed, timeout=LOAD_TIMEOUT_MS) as failed:
        view.load(path, "bad-key")
    key, reason = failed.args
    assert key == "bad-key"
    assert name in reason and expected in reason
    assert view.message == reason  # shown in the view, readable
    assert view.image_size is None
    assert len(failures) == 1
    if name == "broken.png":
        view.grab().save(str(artifacts / "load_failed.png"))

    # The view recovers on the next good image.
    with qtbot.waitSignal(view.image_shown, timeout=LOAD_TIMEOUT_MS):
        view.load(_save(tmp_path / "good.png", _gradient(50, 60)), "good")
    assert view.message is None


def test_8k_load_keeps_gui_responsive_and_repaints_fast(
    qtbot, view: ImageView, tmp_path: Path, artifacts: Path
) -> None:
    path = _save(tmp_path / "huge.jpg", _gradient(8000, 8000))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    events: list[tuple[str, float]] = []
    view.preview_shown.connect(lambda k: events.append(("preview", time.perf_counter())))
    view.image_shown.connect(lambda k: events.append(("full", time.perf_counter())))

    timer.start()
    qtbot.wait(30)
    start = time.perf_counter()
    with qtbot.waitSignal(view.image_shown, timeout=LOAD_TIMEOUT_MS):
        view.load(path, "huge")
    qtbot.wait(100)  # include the first full-resolution paint
    timer.stop()

    gaps = np.diff([start, *[t for t in ticks if t >= start]])
    longest_gap_ms = float(gaps.max()) * 1000
    assert [e for e, _ in events] == ["preview", "full"]
    assert view.image_size == (8000, 8000)
    assert longest_gap_ms < 200, f"GUI thread blocked for {longest_gap_ms:.0f} ms while loading 8k"

    # Zoom and pan on the 8k image: each repaint draws one pyramid level, never 64 MP.
    repaint_ms = {}
    for name, step in (
        ("zoom_in", lambda: view.view_box.scaleBy((0.6, 0.6))),
        ("pan", lambda: view.view_box.translateBy((40, 25))),
        ("zoom_out", lambda: view.view_box.scaleBy((1 / 0.6, 1 / 0.6))),
    ):
        durations = []
        for _ in range(10):
            t = time.perf_counter()
            step()
            view.grab()
            durations.append(time.perf_counter() - t)
        repaint_ms[name] = round(max(durations) * 1000, 1)
    view.fit()
    view.grab().save(str(artifacts / "8k_fit.png"))

    timings = {
        "preview_ms": round((events[0][1] - start) * 1000),
        "full_ms": round((events[1][1] - start) * 1000),
        "longest_gui_gap_ms": round(longest_gap_ms, 1),
        "worst_repaint_ms": repaint_ms,
    }
    (artifacts / "image_view_8k_timings.json").write_text(json.dumps(timings, indent=2))
    print("8k timings:", timings)
    assert max(repaint_ms.values()) < 150, repaint_ms


# ---------------------------------------------------------------------------------------------- overlays


def test_heatmap_overlay_stretches_and_follows_controls(qtbot, view: ImageView, artifacts: Path) -> None:
    view.set_image(_gradient(600, 800), key="img")
    anomaly = _blobs(256)[:192]  # 256 x 192: a 1/3.125 scale of the image, hot blob at map (75, 75)
    hot_x, hot_y = 75 * 800 / 256 + 1, 75 * 600 / 192 + 1  # ... i.e. image pixel (235, 235)
    view.set_heatmap(anomaly)
    item = view.heatmap_item

    assert item.image.shape == (768, 1024)  # small model maps are upsampled for a smooth look and outline
    assert item.mapRectToParent(item.boundingRect()) == QRectF(0, 0, 800, 600)
    assert "heat 0.9" in view.pixel_info(hot_x, hot_y)

    view.set_heatmap_opacity(0.3)
    assert item.opacity() == pytest.approx(0.3)
    assert view._opacity_slider.value() == 30
    view._opacity_slider.setValue(70)  # the user drags the slider
    assert item.opacity() == pytest.approx(0.7) and view.heatmap_opacity == pytest.approx(0.7)

    # Fixed colour levels 0..1: the 0.9 peak renders as the colormap's 90 % colour, not stretched to the top.
    view.set_heatmap_opacity(1.0)
    view.set_overlay_visible("outline", False)
    lut = view._colormap_lut().astype(int)
    hot = _screen_color(view, hot_x, hot_y)
    seen = np.array([hot.red(), hot.green(), hot.blue()])
    assert np.abs(seen - lut[round(0.9 * 255)]).max() < 20
    assert np.abs(seen - lut[-1]).max() > 60

    before = item.lut.copy()
    view._colormap_combo.setCurrentText("viridis")
    assert not np.array_equal(before, item.lut)

    view.set_overlay_visible("heatmap", False)
    assert not item.isVisible() and not view._checks["heatmap"].isChecked()
    view.set_overlay_visible("heatmap", True)
    view.set_overlay_visible("outline", True)
    view.set_heatmap_opacity(0.5)
    view.grab().save(str(artifacts / "heatmap_viridis.png"))

    view.set_heatmap(None)
    assert item.image is None and view.outline_path().isEmpty()


def test_threshold_outline_updates_live(qtbot, view: ImageView, artifacts: Path) -> None:
    view.set_image(_gradient(1024, 1024), key="img")
    view.set_heatmap(_blobs(1024))
    view._colormap_combo.setCurrentText("turbo")

    view.set_threshold(0.5)  # both blobs exceed it
    both = view.outline_path()
    view.grab().save(str(artifacts / "threshold_0.50.png"))
    view.set_threshold(0.75)  # only the 0.9 blob
    high = view.outline_path()
    view.grab().save(str(artifacts / "threshold_0.75.png"))

    assert len(both.toSubpathPolygons()) == 2
    assert len(high.toSubpathPolygons()) == 1
    assert both.boundingRect().contains(QPointF(750, 650)) and not high.boundingRect().contains(QPointF(750, 650))
    assert high.boundingRect().contains(QPointF(300, 300))
    assert high.boundingRect().width() < 0.5 * both.boundingRect().width()
    view.set_threshold(0.95)  # above every score: nothing outlined
    assert view.outline_path().isEmpty()

    durations = []
    for t in np.linspace(0.2, 0.85, 30):
        started = time.perf_counter()
        view.set_threshold(float(t))
        durations.append(time.perf_counter() - started)
    worst_ms = max(durations) * 1000
    print(f"threshold update on 1024^2: median {np.median(durations) * 1000:.2f} ms, worst {worst_ms:.2f} ms")
    assert worst_ms < 50


def test_mask_overlay_fill_and_outline(qtbot, view: ImageView, artifacts: Path) -> None:
    view.set_image(_gradient(300, 400), key="img")
    mask = np.zeros((300, 400), dtype=bool)
    yy, xx = np.ogrid[:300, :400]
    radius = np.hypot(xx - 200, yy - 150)
    mask[(radius < 80) & (radius > 40)] = True  # a ring: outer outline plus the hole's outline
    view.set_mask(mask)

    assert view.mask_item.image.shape == (300, 400)
    outline = view.mask_outline_path()
    assert len(outline.toSubpathPolygons()) == 2
    assert outline.boundingRect().adjusted(-2, -2, 2, 2).contains(QRectF(121, 71, 158, 158))

    inside, outside = _screen_color(view, 200, 90), _screen_color(view, 20, 20)  # ring vs plain image
    assert inside.green() > outside.green() + 15  # the translucent green fill is visible
    view.grab().save(str(artifacts / "mask_ring.png"))

    view.set_overlay_visible("mask", False)
    assert not view.mask_item.isVisible()
    view.set_mask(None)
    assert view.mask_item.image is None and view.mask_outline_path().isEmpty()


def test_boxes_and_polygons_are_drawn_with_labels(qtbot, view: ImageView, artifacts: Path) -> None:
    view.set_image(_gradient(400, 600), key="img")
    boxes = [Box(50, 60, 150, 120, "scratch"), Box(300, 200, 420, 330, "dent")]
    polygons = [Polygon(((450.0, 50.0), (560.0, 80.0), (520.0, 170.0)), "crack")]
    view.set_annotations(boxes, polygons, class_names=["scratch", "dent", "crack"])
    view.set_heatmap(np.zeros((40, 60), dtype=np.float32))  # annotations sit above the heatmap

    assert len(view.annotation_shapes) == 3
    assert [label.text() for label in view.annotation_labels] == ["scratch", "dent", "crack"]
    assert view.annotation_shapes[0].rect() == QRectF(50, 60, 100, 60)
    colors = {item.pen().color().name() for item in view.annotation_shapes}
    assert len(colors) == 3  # one colour per class of the dataset
    assert view.annotation_shapes[2].path().boundingRect() == QRectF(450, 50, 110, 120)
    scene = view.view_box.scene()
    assert all(item.scene() is scene for item in view.annotation_shapes)
    view.grab().save(str(artifacts / "annotations.png"))

    view.set_overlay_visible("annotations", False)
    assert not view.annotation_shapes[0].isVisible()
    view.set_overlay_visible("annotations", True)
    old = view.annotation_shapes
    view.set_annotations([], [])
    assert view.annotation_shapes == () and all(item.scene() is None for item in old)


def test_new_key_clears_overlays_until_its_pixels_arrive(qtbot, view: ImageView, tmp_path: Path) -> None:
    view.set_image(_gradient(100, 100), key="a")
    view.set_heatmap(np.full((100, 100), 0.8, dtype=np.float32))
    view.set_annotations([Box(1, 1, 5, 5)], [])

    view.load(_save(tmp_path / "b.png", _gradient(200, 300)), "b")
    assert view.heatmap_item.image is None and view.annotation_shapes == ()
    view.set_mask(np.ones((200, 300), dtype=bool))  # the caller sets b's overlays right away
    assert not view.mask_item.isVisible()  # ... but they wait for b's pixels, not shown over a's
    with qtbot.waitSignal(view.image_shown, timeout=LOAD_TIMEOUT_MS):
        pass
    assert view.mask_item.isVisible()
    assert view.mask_item.mapRectToParent(view.mask_item.boundingRect()) == QRectF(0, 0, 300, 200)

    view.set_image(_gradient(200, 300), key="b")  # same key: overlays stay
    assert view.mask_item.image is not None


def test_mouse_readout_in_status(qtbot, view: ImageView) -> None:
    rgb = _solid(50, 80, (10, 20, 30))
    rgb[25, 40] = (200, 100, 50)
    view.set_image(rgb, key="px")
    heat = np.zeros((50, 80), dtype=np.float32)
    heat[25, 40] = 0.75
    view.set_heatmap(heat)
    graphics = view.view_box.scene().views()[0]
    pos = graphics.mapFromScene(view.view_box.mapViewToScene(QPointF(40.5, 25.5)))
    qtbot.mouseMove(graphics.viewport(), QPoint(pos.x(), pos.y()))
    qtbot.waitUntil(lambda: "x 40  y 25" in view.status_text, timeout=2000)
    assert view.status_text == "x 40  y 25   RGB 200 100 50   heat 0.750  ≥ thr"


def test_fit_shows_whole_image(qtbot, view: ImageView) -> None:
    view.set_image(_gradient(300, 1200), key="wide")
    view.view_box.scaleBy((0.1, 0.1))
    view.fit()
    (x0, x1), (y0, y1) = view.view_box.viewRange()
    assert x0 <= 0 and x1 >= 1200 and y0 <= 0 and y1 >= 300
    assert view.view_box.state["yInverted"] and view.view_box.state["aspectLocked"]
    assert view.view_box.state["mouseEnabled"] == [True, True]  # drag pans, wheel zooms
