"""Point-cloud view: an organised cloud in 3D (pyqtgraph OpenGL) beside its depth map, linked to the image.

Colour by height, by the RGB image or by an anomaly map; the depth map is the organised grid itself, so a pixel of
the image, of the depth map and a 3D point are the same index (row, col). Selecting a pixel (in the image view
or the depth map) highlights its 3D point; clicking near a 3D point selects its pixel (the nearest displayed
point on screen). Large clouds are decimated on a regular grid stride for display (the picking stays exact for
displayed points; the stride is shown), so rotating stays smooth at 500k points and beyond.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pyqtgraph.opengl as gl
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSplitter, QVBoxLayout, QWidget

COLOUR_MODES = ("height", "rgb", "anomaly")
DISPLAY_POINTS = 250_000  # displayed points at most; more only costs frame time, not insight


def _viridis(values: np.ndarray) -> np.ndarray:
    """N values in 0..1 -> N x 4 RGBA floats (pyqtgraph's viridis)."""
    cmap = pg.colormap.get("viridis")
    return cmap.map(np.clip(values, 0, 1), mode="float")


def display_stride(n_valid: int, limit: int = DISPLAY_POINTS) -> int:
    """Grid stride s (every s-th row and column) that brings n_valid points under `limit`."""
    return max(1, int(np.ceil(np.sqrt(n_valid / limit))))


class _PickingGLView(gl.GLViewWidget):
    """GLViewWidget that reports a left click (without drag) at a screen position."""

    clicked = Signal(float, float)

    def mousePressEvent(self, ev):
        self._press = ev.position()
        super().mousePressEvent(ev)

    def mouseReleaseEvent(self, ev):
        p = ev.position()
        press = getattr(self, "_press", None)
        if ev.button() == Qt.MouseButton.LeftButton and press is not None and (p - press).manhattanLength() < 4:
            self.clicked.emit(p.x(), p.y())
        super().mouseReleaseEvent(ev)


class CloudView(QWidget):
    """3D scatter + depth map of one organised cloud. Signal pixel_selected(row, col) on a pick in 3D."""

    pixel_selected = Signal(int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.xyz: np.ndarray | None = None
        self.rgb: np.ndarray | None = None
        self.anomaly: np.ndarray | None = None
        self.stride = 1
        self._idx: np.ndarray | None = None  # (row, col) of each displayed point
        self._pos: np.ndarray | None = None
        self.selected: tuple[int, int] | None = None

        self.mode = QComboBox()
        self.mode.addItems(["height", "rgb", "anomaly"])
        self.mode.currentTextChanged.connect(lambda _t: self._recolour())
        self.info = QLabel("No point cloud for this image.")
        top = QHBoxLayout()
        top.addWidget(QLabel("Colour by"))
        top.addWidget(self.mode)
        top.addWidget(self.info, 1)

        self.gl_view = _PickingGLView()
        self.gl_view.setBackgroundColor((20, 20, 24))
        self.scatter = gl.GLScatterPlotItem(pos=np.zeros((1, 3)), size=2.0, pxMode=True)
        self.scatter.setGLOptions("opaque")  # the default additive blending washes dense clouds out to white
        self.marker = gl.GLScatterPlotItem(pos=np.zeros((1, 3)), size=14.0, color=(1, 0.2, 0.2, 1), pxMode=True)
        self.marker.setVisible(False)
        self.marker.setGLOptions("translucent")
        self.gl_view.addItem(self.scatter)
        self.gl_view.addItem(self.marker)
        self.gl_view.clicked.connect(self._on_gl_click)

        # The depth map in row-major order whatever pyqtgraph's global option: pixel (col, row) = grid index.
        self.depth = pg.GraphicsLayoutWidget()
        self.depth_box = self.depth.addViewBox(lockAspect=True, invertY=True)
        self.depth_item = pg.ImageItem(axisOrder="row-major")
        self.depth_item.setLookupTable(pg.colormap.get("viridis").getLookupTable(nPts=256))
        self.depth_box.addItem(self.depth_item)
        self.depth_marker = pg.ScatterPlotItem(size=12, pen=pg.mkPen("r", width=2), brush=None)
        self.depth_box.addItem(self.depth_marker)
        self.depth_item.mouseClickEvent = self._on_depth_click

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.gl_view)
        split.addWidget(self.depth)
        split.setSizes([600, 300])
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(split, 1)

    # ------------------------------------------------------------------ data
    def set_cloud(self, xyz: np.ndarray | None, rgb: np.ndarray | None = None,
                  anomaly: np.ndarray | None = None, about: str | None = None) -> None:
        """Show an organised cloud (H x W x 3, zeros = no point); rgb and anomaly maps of the same grid size
        (other sizes are resampled by nearest neighbour); `about` says what the file is (a depth map's kind)."""
        self.xyz, self.selected = xyz, None
        self.marker.setVisible(False)
        self.depth_marker.clear()
        if xyz is None:
            self.scatter.setData(pos=np.zeros((1, 3)), color=(0, 0, 0, 0))
            self.depth_item.clear()
            self.info.setText("No point cloud for this image.")
            return
        h, w = xyz.shape[:2]
        self.rgb = None if rgb is None else _fit(rgb, h, w)
        self.anomaly = None if anomaly is None else _fit(anomaly, h, w)
        valid = np.any(xyz != 0, axis=-1)
        self.stride = display_stride(int(valid.sum()))
        sub = np.zeros_like(valid)
        sub[:: self.stride, :: self.stride] = True
        rows, cols = np.nonzero(valid & sub)
        self._idx = np.stack([rows, cols], 1)
        pts = xyz[rows, cols].astype(np.float32)
        self._center = pts.mean(0) if len(pts) else np.zeros(3, np.float32)
        # z is the distance from the sensor: flip it so the part rises towards the viewer
        self._pos = (pts - self._center) * np.array([1, -1, -1], np.float32)
        extent = float(np.ptp(self._pos, 0).max()) if len(pts) else 1.0
        self.gl_view.setCameraPosition(distance=2.0 * extent, elevation=35, azimuth=-90)
        z = xyz[..., 2]
        if valid.any():
            near, far = float(z[valid].min()), float(z[valid].max())
            depth = np.where(valid, (far - z) / (far - near + 1e-9), 0.0)  # nearer = brighter, no point = 0
        else:
            depth = np.zeros(z.shape)
        self.depth_item.setImage(depth.astype(np.float32), levels=(0.0, 1.0))
        self.depth_box.autoRange()
        shown = len(pts)
        self.info.setText(f"{int(valid.sum()):,} points" + (f", every {self.stride}th row/col shown ({shown:,})"
                                                           if self.stride > 1 else "") + (f"; {about}" if about else ""))
        self._recolour()

    def set_anomaly(self, anomaly: np.ndarray | None) -> None:
        if self.xyz is not None:
            self.anomaly = None if anomaly is None else _fit(anomaly, *self.xyz.shape[:2])
            self._recolour()

    @property
    def n_displayed(self) -> int:
        return 0 if self._idx is None else len(self._idx)

    def _recolour(self) -> None:
        if self.xyz is None or self._idx is None or self._pos is None:
            return
        mode = self.mode.currentText()
        r, c = self._idx[:, 0], self._idx[:, 1]
        if mode == "rgb" and self.rgb is not None:
            colours = np.concatenate([self.rgb[r, c, :3] / 255.0, np.ones((len(r), 1))], 1)
        elif mode == "anomaly" and self.anomaly is not None:
            a = self.anomaly[r, c]
            lo, hi = float(np.min(a)), float(np.max(a))
            colours = pg.colormap.get("inferno").map((a - lo) / (hi - lo + 1e-9), mode="float")
        else:
            height = self._pos[:, 2]
            colours = _viridis((height - height.min()) / (np.ptp(height) + 1e-9))
        self.scatter.setData(pos=self._pos, color=np.ascontiguousarray(colours, np.float32), size=2.0)

    # ------------------------------------------------------------------ linking
    def select_pixel(self, row: int, col: int) -> bool:
        """Highlight the 3D point of image pixel (row, col); False when it has no point."""
        if self.xyz is None or not (0 <= row < self.xyz.shape[0] and 0 <= col < self.xyz.shape[1]):
            return False
        p = self.xyz[row, col]
        if not np.any(p != 0):
            return False
        self.selected = (row, col)
        pos = ((p - self._center) * np.array([1, -1, -1], np.float32))[None]
        self.marker.setData(pos=pos)
        self.marker.setVisible(True)
        self.depth_marker.setData([col + 0.5], [row + 0.5])
        return True

    def _on_depth_click(self, ev) -> None:
        pos = ev.pos()
        row, col = int(pos.y()), int(pos.x())
        if self.select_pixel(row, col):
            self.pixel_selected.emit(row, col)

    def screen_positions(self) -> np.ndarray:
        """N x 2 widget-pixel positions of the displayed points (the view's own projection)."""
        assert self._pos is not None
        view = self.gl_view
        vp = view.getViewport()
        mvp = view.projectionMatrix(vp, vp) * view.viewMatrix()
        m = np.array(mvp.data(), np.float64).reshape(4, 4).T  # QMatrix4x4.data() is column-major
        homo = np.concatenate([self._pos, np.ones((len(self._pos), 1))], 1) @ m.T
        ndc = homo[:, :2] / homo[:, 3:4]
        w, h = view.width(), view.height()
        return np.stack([(ndc[:, 0] + 1) * 0.5 * w, (1 - ndc[:, 1]) * 0.5 * h], 1)

    def pick(self, x: float, y: float, radius: float = 12.0) -> tuple[int, int] | None:
        """(row, col) of the displayed point nearest to widget position (x, y), within `radius` pixels."""
        if self._pos is None or not len(self._pos):
            return None
        d = np.linalg.norm(self.screen_positions() - np.array([x, y]), axis=1)
        k = int(np.argmin(d))
        if d[k] > radius:
            return None
        return int(self._idx[k, 0]), int(self._idx[k, 1])  # type: ignore[index]

    def _on_gl_click(self, x: float, y: float) -> None:
        hit = self.pick(x, y)
        if hit is not None and self.select_pixel(*hit):
            self.pixel_selected.emit(*hit)


def _fit(a: np.ndarray, h: int, w: int) -> np.ndarray:
    if a.shape[:2] == (h, w):
        return a
    import cv2

    return cv2.resize(a, (w, h), interpolation=cv2.INTER_NEAREST)
