"""The 3D view of a part with a point cloud (RGB + 3D datasets): its dock appears on the first such part (OpenGL
is not set up for 2D-only work); a click on the image highlights the 3D point under it, and back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Qt

from app.gui.features.base import Feature
from engine.datasets.types import Sample

DOCK_TITLE = "3D"


if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class CloudFeature(Feature):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.view: Any = None  # app.gui.cloud_view.CloudView, made on first use
        self.cloud_key: str | None = None
        self.pixel_marker: Any = None
        window.image_view.image_shown.connect(self._on_image_shown)

    def _ensure_view(self) -> Any:
        if self.view is None:
            import pyqtgraph as pg

            from app.gui.cloud_view import CloudView

            w = self.window
            self.view = CloudView()
            w.add_dock(DOCK_TITLE, self.view, Qt.DockWidgetArea.RightDockWidgetArea)
            self.view.pixel_selected.connect(self._on_cloud_pixel)
            self.pixel_marker = pg.ScatterPlotItem(size=14, pen=pg.mkPen("r", width=2), brush=None)
            w.image_view.view_box.addItem(self.pixel_marker)
            w.image_view.view_box.scene().sigMouseClicked.connect(self._on_image_click)
        return self.view

    def _on_image_shown(self, key: str) -> None:
        w = self.window
        sample = w.samples.get(key)
        if w.image_view.image_size is not None and sample is not None and key == w.shown_key:
            self._show(key, sample)

    def _show(self, key: str, sample: Sample) -> None:
        from engine.datasets.pointcloud import cloud_path

        w = self.window
        xyz_path = cloud_path(sample.extra)
        if xyz_path is None:
            if self.view is not None:
                self.view.set_cloud(None)
            return
        view = self._ensure_view()
        amap = w.scoring.anomaly_map(key)

        def load() -> tuple[np.ndarray, np.ndarray, str]:
            from engine.datasets.imageio import read_image
            from engine.datasets.pointcloud import display_cloud

            # a depth map is shown as relief (its kind detected: a zero background left out, the depth range
            # scaled to a fifth of the side whatever its unit); an xyz cloud as measured
            cloud, about = display_cloud(xyz_path)
            return cloud, read_image(sample.image_path), about

        def show(result: tuple[np.ndarray, np.ndarray, str]) -> None:
            if key == w.shown_key:
                self.cloud_key = key
                view.set_cloud(result[0], result[1], amap, about=result[2])
                if self.pixel_marker is not None:
                    self.pixel_marker.clear()

        w.background(load, show, lambda msg: (view.set_cloud(None), w.status_message.emit(msg)))

    def show_anomaly(self, key: str, amap: np.ndarray | None) -> None:
        """The scoring feature's heatmap of `key`, also on the 3D points when that part is shown."""
        if self.view is not None and self.cloud_key == key:
            self.view.set_anomaly(amap)

    def _scale(self) -> tuple[float, float] | None:
        """(rows, cols) of the cloud grid per image pixel; None without a cloud or an image."""
        size = self.window.image_view.image_size
        if self.view is None or self.view.xyz is None or size is None:
            return None
        h, w = self.view.xyz.shape[:2]
        return h / size[1], w / size[0]

    def _on_image_click(self, ev: Any) -> None:
        """A click on the image (with the pan tool) highlights the part's 3D point under it."""
        w = self.window
        if self._scale() is None or w.annotation.controller.layer.tool != "pan" or self.cloud_key != w.shown_key:
            return
        p = w.image_view.view_box.mapSceneToView(ev.scenePos())
        self.select_image_pixel(int(p.y()), int(p.x()))

    def select_image_pixel(self, row: int, col: int) -> bool:
        """Highlight image pixel (row, col) in the image and its 3D point; False when it has no 3D point."""
        scale = self._scale()
        if scale is None:
            return False
        ok = self.view.select_pixel(int(row * scale[0]), int(col * scale[1]))
        self.pixel_marker.setData([col + 0.5], [row + 0.5])
        if not ok:
            self.window.status_message.emit(f"Pixel ({col}, {row}) has no measured 3D point.")
        return ok

    def _on_cloud_pixel(self, row: int, col: int) -> None:
        scale = self._scale()
        if scale is None:
            return
        r, c = (row + 0.5) / scale[0], (col + 0.5) / scale[1]
        self.pixel_marker.setData([c], [r])
        x, y, z = (float(v) for v in self.view.xyz[row, col])
        self.window.status_message.emit(f"Pixel ({int(c)}, {int(r)}): x {x:.2f}, y {y:.2f}, z {z:.2f}")
