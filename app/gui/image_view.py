"""Image viewer for inspection: async loading, level-of-detail display of huge images, toggleable overlays.

Everything drawn in the view lives in *image pixel coordinates* of the full-resolution image: pixel (x, y)
covers [x, x+1) x [y, y+1), row 0 on top. Overlays whose source array has another size (a 256x256 anomaly
map on a 4096x4096 image) are scaled onto the image rect by their item transform, so nothing is resampled
on the GUI thread when the image size becomes known.

Contract for callers: `load(path, key)` (or `set_image`) first, then the overlays for that key. Changing the
key clears the overlays of the previous image; until the new image's first pixels arrive the overlay layer
is hidden, so a new mask is never shown over the previous picture.

Why one module of ~770 lines: the loader, the level-of-detail pyramid item and the overlays share the view's
load generation and ticket (what makes a stale load or overlay harmless); split apart, that state would have to
be public. Why its own thread pool rather than app.gui.tasks: a load reports twice (a quick preview, then the
full image) and is cancelled by ticket while queued, which the task pool's one-result tasks do not do.
"""

from __future__ import annotations

import math
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath, QTransform
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsSimpleTextItem,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QStyleOptionGraphicsItem,
    QVBoxLayout,
    QWidget,
)

from engine.datasets.imageio import image_size, read_image, read_preview
from engine.datasets.types import Box, Polygon
from engine.errors import ImageReadError

COLORMAPS = ("inferno", "viridis", "turbo", "magma", "plasma", "cividis")
OVERLAYS = ("mask", "heatmap", "outline", "annotations")

# JPEGs decode at 1/2..1/8 scale through DCT scaling, so a preview costs ~1/10 of the full decode. Other
# formats (PNG, TIFF) must be decoded completely even for a preview (PIL: 1.4 s vs OpenCV 0.34 s for an
# 8k PNG), so for them the preview step would only delay the full image.
_PREVIEW_SUFFIXES = frozenset({".jpg", ".jpeg"})
_PREVIEW_MIN_PIXELS = 4_000_000  # below this the full decode is fast enough on its own
_PREVIEW_SIDE = 1024
# Pyramid levels stop at this side; the coarsest level is what a fully zoomed-out view draws.
_PYRAMID_MIN_SIDE = 256
# Heatmaps and mask fills are smooth / binary: displaying them at <= 2048 px keeps colour-mapping and
# contouring cheap on 8k images (outlines are vectors and stay sharp at any zoom).
_OVERLAY_MAX_SIDE = 2048
_HEATMAP_MIN_SIDE = 1024

_MASK_COLOR = (0, 230, 90)
_OUTLINE_COLOR = (0, 255, 255)


@dataclass(frozen=True)
class OverlayBox:
    """A box drawn over the image by a feature (e.g. detections): pixel corners, a tag, a colour, solid or dashed."""

    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    color: tuple[int, int, int]
    dashed: bool = False


_CLASS_PALETTE = (
    (255, 80, 80), (255, 170, 0), (80, 160, 255), (200, 90, 255),
    (255, 230, 60), (0, 210, 210), (255, 110, 190), (150, 220, 90),
)


# --------------------------------------------------------------------------------------------- pyramid


@dataclass(frozen=True)
class _Pyramid:
    """An image at halving resolutions, each level wrapped (zero-copy) in a QImage.

    `size` is the full image's (width, height); a preview pyramid's levels are smaller than that and are
    stretched onto the full rect, so overlays in full-resolution coordinates line up with the preview.
    """

    size: tuple[int, int]
    levels: tuple[np.ndarray, ...]
    qimages: tuple[QImage, ...]


def _build_pyramid(rgb: np.ndarray, size: tuple[int, int] | None = None) -> _Pyramid:
    """Safe to call off the GUI thread: QImage is reentrant and the arrays stay referenced by the pyramid."""
    levels = [np.ascontiguousarray(rgb)]
    while max(levels[-1].shape[:2]) > _PYRAMID_MIN_SIDE and min(levels[-1].shape[:2]) >= 2:
        prev = levels[-1]
        # INTER_AREA averages 2x2 blocks: no aliasing on fine textures, and OpenCV releases the GIL.
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    qimages = tuple(pg.functions.ndarray_to_qimage(a, QImage.Format.Format_RGB888) for a in levels)
    full = size or (rgb.shape[1], rgb.shape[0])
    return _Pyramid(size=full, levels=tuple(levels), qimages=qimages)


class _PyramidItem(pg.GraphicsObject):
    """Draws the pyramid level matching the current zoom, so a pan or zoom never touches 64 MP.

    pyqtgraph's ImageItem(autoDownsample=True) re-downsamples the whole array on the GUI thread whenever the
    zoom crosses a factor (measured 1.4-3.2 s per step on 8000x8000); here each repaint is one drawImage of
    a level at most ~2x the screen size (2-10 ms).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pyramid: _Pyramid | None = None

    def set_pyramid(self, pyramid: _Pyramid | None) -> None:
        self.prepareGeometryChange()
        self._pyramid = pyramid
        self.update()

    @property
    def pyramid(self) -> _Pyramid | None:
        return self._pyramid

    def boundingRect(self) -> QRectF:
        if self._pyramid is None:
            return QRectF()
        return QRectF(0, 0, *self._pyramid.size)

    def paint(self, painter: QPainter, option: Any, widget: QWidget | None = None) -> None:
        if self._pyramid is None:
            return
        # Device pixels per image pixel (HiDPI screens have more device pixels than logical ones).
        scale = QStyleOptionGraphicsItem.levelOfDetailFromTransform(painter.worldTransform())
        scale *= painter.device().devicePixelRatioF()
        needed_width = self._pyramid.size[0] * scale
        index = 0
        for i, level in enumerate(self._pyramid.levels):
            if level.shape[1] >= needed_width:
                index = i  # the coarsest level that still has a texel per device pixel
        drawn_width = self._pyramid.levels[index].shape[1]
        # Smooth when shrinking (no shimmering); nearest when magnifying, so single pixels stay inspectable.
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, drawn_width > needed_width)
        painter.drawImage(self.boundingRect(), self._pyramid.qimages[index])


# ------------------------------------------------------------------------------------ loading off-thread


class _Ticket:
    """The view's current load generation, read by workers to skip work nobody will look at."""

    def __init__(self) -> None:
        self.generation = 0

    def cancel(self, *_: object) -> None:
        self.generation += 1


class _Relay(QObject):
    """Carries worker results to the GUI thread.

    One app-lifetime object rather than a signal on the view: a view may be deleted while a decode is in
    flight, and emitting on a deleted QObject from another thread is a crash; the relay is never deleted and
    delivers only to views that are still alive.
    """

    delivered = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.delivered.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _dispatch(self, payload: tuple[weakref.ref, Callable[..., None], tuple]) -> None:
        view_ref, handler, args = payload
        view = view_ref()
        if view is not None and shiboken6.isValid(view):
            handler(view, *args)


_relay: _Relay | None = None
_pool: QThreadPool | None = None


def _loader() -> tuple[_Relay, QThreadPool]:
    # Created lazily from the first view, i.e. on the GUI thread, which is the thread the relay must live in.
    global _relay, _pool
    if _relay is None or _pool is None:
        _relay = _Relay()
        _pool = QThreadPool()
        _pool.setMaxThreadCount(2)  # decoding is memory-bound; more threads only raise peak memory
    return _relay, _pool


def _load_job(
    relay: _Relay, path: Path, key: str, generation: int, ticket: _Ticket, view_ref: weakref.ref
) -> None:
    """Runs on a pool thread. Never raises: every failure becomes a readable reason naming the file."""

    def post(handler: Callable[..., None], *args: object) -> None:
        relay.delivered.emit((view_ref, handler, (generation, key, *args)))

    def stale() -> bool:
        return ticket.generation != generation

    try:
        if stale():
            return
        width, height = image_size(path)  # header only: broken files fail here, fast
        if width * height >= _PREVIEW_MIN_PIXELS and path.suffix.lower() in _PREVIEW_SUFFIXES:
            preview = read_preview(path, _PREVIEW_SIDE)
            if stale():
                return
            post(ImageView._on_preview_loaded, _build_pyramid(preview, (width, height)))
        if stale():
            return
        rgb = read_image(path)
        if stale():
            return
        post(ImageView._on_full_loaded, _build_pyramid(rgb))
    except ImageReadError as exc:
        post(ImageView._on_load_failed, f"Cannot open {path.name}: {exc.reason}")
    except MemoryError:
        post(ImageView._on_load_failed, f"Cannot open {path.name}: not enough memory to decode it")
    except Exception as exc:  # a worker must report, never die silently
        post(ImageView._on_load_failed, f"Cannot open {path.name}: {exc.__class__.__name__}: {exc}")


# ---------------------------------------------------------------------------------------- contours


def _contour_path(binary: np.ndarray) -> QPainterPath:
    """Closed outlines of a binary array as one path, in the array's pixel coordinates (through pixel centres).

    RETR_LIST keeps the holes' outlines too: the path is the exact boundary of the region, not its hull.
    """
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return QPainterPath()
    # Each contour is closed by repeating its first point; `connect` breaks the line between contours.
    closed = [np.concatenate([c[:, 0, :], c[:1, 0, :]]) for c in contours]
    points = np.concatenate(closed).astype(np.float64) + 0.5
    connect = np.ones(len(points), dtype=np.int32)
    connect[np.cumsum([len(c) for c in closed]) - 1] = 0
    return pg.arrayToQPath(points[:, 0], points[:, 1], connect=connect, finiteCheck=False)


def _fit_inside(array: np.ndarray, max_side: int) -> np.ndarray:
    h, w = array.shape[:2]
    factor = max_side / max(h, w)
    if factor >= 1:
        return array
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def _heatmap_for_display(anomaly_map: np.ndarray) -> np.ndarray:
    """float32 map with its longer side in [_HEATMAP_MIN_SIDE, _OVERLAY_MAX_SIDE].

    Model maps are often 64-256 px; stretched over the image they would show blocks and a staircase
    outline. Bilinear upsampling (what the scores mean between grid points anyway) gives smooth colours and
    a smooth threshold contour, at the cost of ~0.3 ms per threshold move at 1024 px.
    """
    heat = anomaly_map.astype(np.float32, copy=False)
    h, w = heat.shape
    long_side = max(h, w)
    if long_side >= _HEATMAP_MIN_SIDE:
        return _fit_inside(heat, _OVERLAY_MAX_SIDE)
    factor = _HEATMAP_MIN_SIDE / long_side
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)


def _class_color(name: str, class_names: Sequence[str]) -> tuple[int, int, int]:
    """The dataset's class order gives distinct colours; unknown names fall back to a stable hash."""
    if name in class_names:
        return _CLASS_PALETTE[list(class_names).index(name) % len(_CLASS_PALETTE)]
    # crc32, not hash(): the same class keeps its colour across runs (hash() is salted per process).
    return _CLASS_PALETTE[zlib.crc32(name.encode()) % len(_CLASS_PALETTE)]


class _Label(QGraphicsRectItem):
    """A class-name tag sitting just above its anchor point, at a constant on-screen size.

    Qt applies ItemIgnoresTransformations in C++; pg.TextItem recomputes its transform in Python on every
    view change, which cost 25 ms per pan repaint with 400 boxes (vs ~3 ms here).
    """

    _PAD = 2

    def __init__(self, text: str, color: tuple[int, int, int], parent: QGraphicsItem) -> None:
        super().__init__(parent)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self._text = QGraphicsSimpleTextItem(text, self)
        self._text.setBrush(QColor(*color))
        size = self._text.boundingRect()
        # Local coordinates are screen pixels with y down (the view's flip is ignored too): draw upwards.
        self._text.setPos(self._PAD, -size.height() - self._PAD)
        self.setRect(QRectF(0, -size.height() - 2 * self._PAD, size.width() + 2 * self._PAD,
                            size.height() + 2 * self._PAD))
        self.setBrush(QColor(0, 0, 0, 160))
        self.setPen(Qt.PenStyle.NoPen)

    def text(self) -> str:
        return self._text.text()


# ----------------------------------------------------------------------------------------------- view


class ImageView(QWidget):
    """Zoomable image with mask / heatmap / threshold-outline / annotation overlays and a small control row.

    Signals:
        load_failed(key, reason): the image of `key` could not be decoded; `reason` names the file.
        image_shown(key): the full-resolution image of `key` is on screen.
        preview_shown(key): a reduced preview of `key` is on screen (large JPEGs only).
    """

    load_failed = Signal(str, str)
    image_shown = Signal(str)
    preview_shown = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._relay, self._pool = _loader()
        self._ticket = _Ticket()
        self.destroyed.connect(self._ticket.cancel)  # queued decodes of a closed view stop early
        self._key: str | None = None
        self._loading_name: str | None = None
        self._image_size: tuple[int, int] | None = None

        self._heatmap: np.ndarray | None = None  # as given, for readout under the cursor
        self._heatmap_display: np.ndarray | None = None  # <= _OVERLAY_MAX_SIDE, for colouring and contours
        self._mask_shape: tuple[int, int] | None = None
        self._threshold = 0.5
        self._opacity = 0.45
        self._colormap = COLORMAPS[0]

        self._build_scene()
        self._build_controls()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(self._controls)
        stack = QGridLayout()  # the message label sits on top of the graphics view, in the same cell
        stack.addWidget(self._graphics, 0, 0)
        stack.addWidget(self._message, 0, 0, Qt.AlignmentFlag.AlignCenter)
        layout.addLayout(stack, 1)
        layout.addWidget(self._status)

    # ----------------------------------------------------------------------------------------- setup

    def _build_scene(self) -> None:
        self._graphics = pg.GraphicsView(background=(30, 30, 30))
        self._vb = pg.ViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self._vb.setLimits(minXRange=4, minYRange=4)  # no point zooming past a few pixels across
        self._graphics.setCentralItem(self._vb)

        self._image_item = _PyramidItem()
        self._vb.addItem(self._image_item)

        # Hidden while a new key's pixels are pending, so new overlays never sit on the previous image.
        self._overlay_root = pg.ItemGroup()
        self._overlay_root.setZValue(10)
        self._vb.addItem(self._overlay_root)

        # axisOrder per item, not pg.setConfigOptions: other plots in the app keep pyqtgraph's default.
        self._mask_item = pg.ImageItem(axisOrder="row-major")
        mask_lut = np.zeros((256, 4), dtype=np.uint8)
        mask_lut[:, :3] = _MASK_COLOR
        mask_lut[:, 3] = np.linspace(0, 90, 256).astype(np.uint8)  # coverage -> alpha (soft when shrunk)
        self._mask_lut = mask_lut
        self._mask_outline = QGraphicsPathItem()
        self._mask_outline.setPen(pg.mkPen(_MASK_COLOR, width=2))

        self._heatmap_item = pg.ImageItem(axisOrder="row-major")
        self._outline_item = QGraphicsPathItem()
        self._outline_item.setPen(pg.mkPen(_OUTLINE_COLOR, width=2))

        self._annotation_root = pg.ItemGroup()
        self._annotation_shapes: list[QGraphicsItem] = []
        self._annotation_labels: list[_Label] = []

        # Boxes a feature draws (detections), above the dataset's own labels and toggled by that feature.
        self._box_root = pg.ItemGroup()
        self._overlay_boxes: list[OverlayBox] = []
        self._box_items: list[QGraphicsItem] = []

        for z, item in enumerate(
            (self._mask_item, self._heatmap_item, self._mask_outline, self._outline_item, self._annotation_root,
             self._box_root)
        ):
            item.setZValue(z)
            item.setParentItem(self._overlay_root)

        self._graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)

        self._message = QLabel()
        self._message.setWordWrap(True)
        self._message.setMaximumWidth(520)
        self._message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._message.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._message.setStyleSheet(
            "QLabel { color: #ffd0d0; background: rgba(60, 0, 0, 200); padding: 12px; border-radius: 6px; }"
        )
        self._message.hide()

    def _build_controls(self) -> None:
        self._controls = QHBoxLayout()
        self._controls.setContentsMargins(4, 2, 4, 0)
        self._checks: dict[str, QCheckBox] = {}
        for name, label in zip(OVERLAYS, ("Mask", "Heatmap", "Outline", "Boxes"), strict=True):
            box = QCheckBox(label)
            box.setChecked(True)
            box.toggled.connect(lambda on, n=name: self._apply_visibility(n, on))
            self._checks[name] = box
            self._controls.addWidget(box)

        self._controls.addWidget(QLabel("Opacity"))
        self._opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self._opacity_slider.setRange(0, 100)
        self._opacity_slider.setValue(round(self._opacity * 100))
        self._opacity_slider.setMaximumWidth(120)
        self._opacity_slider.valueChanged.connect(lambda v: self.set_heatmap_opacity(v / 100))
        self._controls.addWidget(self._opacity_slider)

        self._colormap_combo = QComboBox()
        self._colormap_combo.addItems(COLORMAPS)
        self._colormap_combo.currentTextChanged.connect(self.set_colormap)
        self._controls.addWidget(self._colormap_combo)

        fit = QPushButton("Fit")
        fit.clicked.connect(self.fit)
        self._controls.addWidget(fit)
        self._controls.addStretch(1)

        self._status = QLabel(" ")
        self._status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # A long error path must not widen the window: the label's text is cut, never its parent resized.
        self._status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    # ------------------------------------------------------------------------------------ image API

    @property
    def key(self) -> str | None:
        """The key of the image shown or being loaded."""
        return self._key

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the full-resolution image on screen, None before the first pixels arrive."""
        return self._image_size

    @property
    def view_box(self) -> pg.ViewBox:
        return self._vb

    def load(self, path: Path, key: str) -> None:
        """Decode `path` on a worker thread; a JPEG preview shows first when the image is large.

        Results of an earlier load that arrive after this call are dropped. Failures are shown in the view
        and emitted as load_failed(key, reason); this method never raises for a bad file.
        """
        path = Path(path)
        self._ticket.generation += 1
        self._switch_key(key)
        self._loading_name = path.name
        self._status.setText(f"Loading {path.name}…")
        # The job holds a weak reference only: a closed view is freed even while its decode still runs.
        job_args = (self._relay, path, key, self._ticket.generation, self._ticket, weakref.ref(self))
        self._pool.start(lambda: _load_job(*job_args))

    def set_image(self, rgb: np.ndarray, key: str | None = None) -> None:
        """Show an RGB uint8 image (H x W x 3, or H x W grey) now, superseding any pending load.

        The array is not copied (8k images are 192 MB): do not modify it while it is shown. A new key (or
        None) clears the overlays of the previous image; the same key keeps them.
        """
        if rgb.dtype != np.uint8 or rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] != 3):
            raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        self._ticket.generation += 1
        self._loading_name = None
        new_key = key if key is not None else ""
        if key is None or key != self._key:
            self._switch_key(new_key)
        self._show_pyramid(_build_pyramid(rgb))
        self.image_shown.emit(new_key)

    def clear(self) -> None:
        """Empty view: no image, no overlays, no message; pending loads are dropped."""
        self._ticket.generation += 1
        self._switch_key(None)
        self._loading_name = None
        self._image_item.set_pyramid(None)
        self._image_size = None
        self._status.setText(" ")

    def fit(self) -> None:
        """Zoom so the whole image is visible."""
        rect = self._image_rect()
        if rect is not None:
            self._vb.setRange(rect, padding=0.01)

    def _switch_key(self, key: str | None) -> None:
        if key != self._key:
            self.clear_overlays()
            self._overlay_root.setVisible(False)
        self._key = key
        self._message.hide()

    def _show_pyramid(self, pyramid: _Pyramid) -> None:
        previous_size = self._image_size
        self._image_item.set_pyramid(pyramid)
        self._image_size = pyramid.size
        self._fit_overlays_to_image()
        self._overlay_root.setVisible(True)
        self._message.hide()
        # Stepping through same-size images keeps the zoomed region: inspectors compare the same spot.
        if pyramid.size != previous_size:
            self.fit()

    # Handlers below are called by the relay on the GUI thread; stale generations are dropped.

    def _on_preview_loaded(self, generation: int, key: str, pyramid: _Pyramid) -> None:
        if generation != self._ticket.generation:
            return
        self._show_pyramid(pyramid)
        self.preview_shown.emit(key)

    def _on_full_loaded(self, generation: int, key: str, pyramid: _Pyramid) -> None:
        if generation != self._ticket.generation:
            return
        self._show_pyramid(pyramid)
        self._loading_name = None
        self._status.setText(f"{pyramid.size[0]} x {pyramid.size[1]}")
        self.image_shown.emit(key)

    def _on_load_failed(self, generation: int, key: str, reason: str) -> None:
        if generation != self._ticket.generation:
            return
        self._image_item.set_pyramid(None)
        self._image_size = None
        self._overlay_root.setVisible(False)
        self._loading_name = None
        self._message.setText(reason)
        self._message.show()
        self._status.setText(reason)
        self.load_failed.emit(key, reason)

    @property
    def message(self) -> str | None:
        """The error text overlaid on the view, None when no error is shown."""
        return self._message.text() if not self._message.isHidden() else None

    # ---------------------------------------------------------------------------------- overlays API

    def clear_overlays(self) -> None:
        self.set_mask(None)
        self.set_heatmap(None)
        self.set_annotations([], [])
        self.set_boxes([])

    def set_overlay_visible(self, name: str, visible: bool) -> None:
        """Toggle one of OVERLAYS ('mask', 'heatmap', 'outline', 'annotations'); the checkbox follows."""
        self._checks[name].setChecked(visible)  # toggled -> _apply_visibility

    def is_overlay_visible(self, name: str) -> bool:
        return self._checks[name].isChecked()

    def _apply_visibility(self, name: str, visible: bool) -> None:
        items = {
            "mask": (self._mask_item, self._mask_outline),
            "heatmap": (self._heatmap_item,),
            "outline": (self._outline_item,),
            "annotations": (self._annotation_root,),
        }[name]
        for item in items:
            item.setVisible(visible)

    def set_mask(self, mask: np.ndarray | None) -> None:
        """Ground-truth mask (H x W, non-zero = defect) as a translucent fill plus an exact outline."""
        if mask is None:
            self._mask_shape = None
            self._mask_item.clear()
            self._mask_outline.setPath(QPainterPath())
            return
        if mask.ndim != 2:
            raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
        binary = (mask != 0).astype(np.uint8)
        self._mask_shape = binary.shape
        # Outline from the full-resolution mask (vectors stay exact when zoomed in); fill from a capped copy.
        self._mask_outline.setPath(_contour_path(binary))
        fill = _fit_inside(binary * np.uint8(255), _OVERLAY_MAX_SIDE)
        self._mask_item.setImage(fill, levels=(0, 255), lut=self._mask_lut, autoLevels=False)
        self._fit_overlays_to_image()

    def set_heatmap(self, anomaly_map: np.ndarray | None) -> None:
        """Predicted anomaly map in normalised units (0.5 = model threshold); any size, stretched to the image.

        Colours span 0..1 fixed, so the same colour means the same score on every image.
        """
        if anomaly_map is None:
            self._heatmap = self._heatmap_display = None
            self._heatmap_item.clear()
            self._outline_item.setPath(QPainterPath())
            return
        if anomaly_map.ndim != 2:
            raise ValueError(f"expected an H x W anomaly map, got shape {anomaly_map.shape}")
        self._heatmap = anomaly_map
        self._heatmap_display = _heatmap_for_display(anomaly_map)
        self._heatmap_item.setImage(
            self._heatmap_display, levels=(0.0, 1.0), lut=self._colormap_lut(), autoLevels=False
        )
        self._heatmap_item.setOpacity(self._opacity)
        self._update_outline()
        self._fit_overlays_to_image()

    def set_heatmap_opacity(self, alpha: float) -> None:
        self._opacity = float(np.clip(alpha, 0.0, 1.0))
        self._heatmap_item.setOpacity(self._opacity)
        if self._opacity_slider.value() != round(self._opacity * 100):
            self._opacity_slider.blockSignals(True)  # keep the exact float, not the slider's rounding
            self._opacity_slider.setValue(round(self._opacity * 100))
            self._opacity_slider.blockSignals(False)

    @property
    def heatmap_opacity(self) -> float:
        return self._opacity

    def set_colormap(self, name: str) -> None:
        """One of COLORMAPS (any pyqtgraph colormap name works)."""
        self._colormap = name
        if self._colormap_combo.currentText() != name and name in COLORMAPS:
            self._colormap_combo.setCurrentText(name)  # re-enters once with the same name; harmless
        if self._heatmap_display is not None:
            self._heatmap_item.setLookupTable(self._colormap_lut())

    def _colormap_lut(self) -> np.ndarray:
        return pg.colormap.get(self._colormap).getLookupTable(0.0, 1.0, 256, alpha=False)

    def set_threshold(self, threshold: float) -> None:
        """Outline the region anomaly_map >= threshold; cheap enough to call on every slider move."""
        self._threshold = float(threshold)
        self._update_outline()

    @property
    def threshold(self) -> float:
        return self._threshold

    def _update_outline(self) -> None:
        if self._heatmap_display is None:
            self._outline_item.setPath(QPainterPath())
            return
        # NaN >= t is False: undefined pixels are outside the region.
        self._outline_item.setPath(_contour_path(self._heatmap_display >= self._threshold))

    def set_annotations(
        self, boxes: Sequence[Box], polygons: Sequence[Polygon], class_names: Sequence[str] = ()
    ) -> None:
        """Boxes and polygons in image pixel coordinates, each with its class name as a label.

        Pass the dataset's `class_names` (Sample.class_names / Dataset.class_names) so each class gets its
        own colour, the same on every image.
        """
        scene = self._annotation_root.scene()
        for item in [*self._annotation_shapes, *self._annotation_labels]:
            item.setParentItem(None)
            if scene is not None:
                scene.removeItem(item)
        self._annotation_shapes, self._annotation_labels = [], []

        for box in boxes:
            rect = QGraphicsRectItem(QRectF(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0))
            self._add_annotation(rect, box.class_name, QPointF(box.x0, box.y0), class_names)
        for polygon in polygons:
            if len(polygon.points) < 2:
                continue
            path = QPainterPath(QPointF(*polygon.points[0]))
            for x, y in polygon.points[1:]:
                path.lineTo(x, y)
            path.closeSubpath()
            top_left = min(polygon.points, key=lambda p: (p[1], p[0]))
            self._add_annotation(QGraphicsPathItem(path), polygon.class_name, QPointF(*top_left), class_names)

    def _add_annotation(
        self, shape: QGraphicsRectItem | QGraphicsPathItem, name: str, at: QPointF, class_names: Sequence[str]
    ) -> None:
        color = _class_color(name, class_names)
        shape.setPen(pg.mkPen(color, width=2))
        shape.setParentItem(self._annotation_root)
        label = _Label(name, color, self._annotation_root)
        label.setPos(at)
        self._annotation_shapes.append(shape)
        self._annotation_labels.append(label)

    def set_boxes(self, boxes: Sequence[OverlayBox]) -> None:
        """Replace the feature-drawn boxes (image pixel coordinates); an empty list clears them. Cheap enough to
        call on every threshold move: a few hundred rect items."""
        scene = self._box_root.scene()
        for item in self._box_items:
            item.setParentItem(None)
            if scene is not None:
                scene.removeItem(item)
        self._box_items = []
        self._overlay_boxes = list(boxes)
        for box in self._overlay_boxes:
            rect = QGraphicsRectItem(QRectF(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0))
            pen = pg.mkPen(box.color, width=2)
            if box.dashed:
                pen.setStyle(Qt.PenStyle.DashLine)
            pen.setCosmetic(True)  # the same on-screen width at every zoom
            rect.setPen(pen)
            rect.setParentItem(self._box_root)
            self._box_items.append(rect)
            if box.text:
                label = _Label(box.text, box.color, self._box_root)
                label.setPos(QPointF(box.x0, box.y0))
                self._box_items.append(label)

    @property
    def overlay_boxes(self) -> tuple[OverlayBox, ...]:
        """The boxes set_boxes drew, as given."""
        return tuple(self._overlay_boxes)

    @property
    def box_items(self) -> tuple[QGraphicsItem, ...]:
        """The drawn rects and their tags (rects are QGraphicsRectItem, tags carry .text())."""
        return tuple(self._box_items)

    @property
    def annotation_shapes(self) -> tuple[QGraphicsItem, ...]:
        return tuple(self._annotation_shapes)

    @property
    def annotation_labels(self) -> tuple[_Label, ...]:
        return tuple(self._annotation_labels)

    @property
    def heatmap_item(self) -> pg.ImageItem:
        return self._heatmap_item

    @property
    def mask_item(self) -> pg.ImageItem:
        return self._mask_item

    def outline_path(self) -> QPainterPath:
        """The threshold outline in image pixel coordinates."""
        return self._outline_item.mapToParent(self._outline_item.path())

    def mask_outline_path(self) -> QPainterPath:
        return self._mask_outline.mapToParent(self._mask_outline.path())

    def _image_rect(self) -> QRectF | None:
        """The full-resolution image rect; before any image, the rect of whichever overlay is set."""
        if self._image_size is not None:
            return QRectF(0, 0, *self._image_size)
        for shape in (self._mask_shape, None if self._heatmap is None else self._heatmap.shape):
            if shape is not None:
                return QRectF(0, 0, shape[1], shape[0])
        return None

    def _fit_overlays_to_image(self) -> None:
        """Stretch every array-based overlay onto the image rect (their arrays may be of any size)."""
        rect = self._image_rect()
        if rect is None:
            return
        if self._heatmap is not None:
            self._heatmap_item.setRect(rect)
            h, w = self._heatmap_display.shape
            self._outline_item.setTransform(QTransform.fromScale(rect.width() / w, rect.height() / h))
        if self._mask_shape is not None:
            self._mask_item.setRect(rect)
            h, w = self._mask_shape
            self._mask_outline.setTransform(QTransform.fromScale(rect.width() / w, rect.height() / h))

    # ------------------------------------------------------------------------------------ readout

    def pixel_info(self, x: float, y: float) -> str:
        """'x, y  RGB r g b  heat v' for the image pixel at (x, y); '' outside the image."""
        pyramid = self._image_item.pyramid
        if pyramid is None:
            return ""
        width, height = pyramid.size
        col, row = math.floor(x), math.floor(y)
        if not (0 <= col < width and 0 <= row < height):
            return ""
        level = pyramid.levels[0]  # a preview is read at its own (reduced) resolution
        r, g, b = level[row * level.shape[0] // height, col * level.shape[1] // width]
        text = f"x {col}  y {row}   RGB {r} {g} {b}"
        if self._heatmap is not None:
            mh, mw = self._heatmap.shape
            value = self._heatmap[row * mh // height, col * mw // width]
            text += f"   heat {value:.3f}" + ("  ≥ thr" if value >= self._threshold else "")
        return text

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if self._loading_name is not None:
            return  # keep "Loading…" visible until the image is there
        point = self._vb.mapSceneToView(scene_pos)
        self._status.setText(self.pixel_info(point.x(), point.y()) or " ")

    @property
    def status_text(self) -> str:
        return self._status.text()

