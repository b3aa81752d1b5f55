"""Drawing on the image view: box, polygon, brush, eraser and segmenter prompts, with a side panel.

The layer turns mouse gestures (in image pixels) into signals; the controller applies them to the image's
AnnotationEditor (app.annotate.document), which saves every edit before returning, and runs the promptable
segmenter (engine.runtime.segmenter) off the GUI thread. With no tool selected the layer lets the view pan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QKeySequence, QPainter, QPainterPath, QPen, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGraphicsObject,
    QGraphicsSceneMouseEvent,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStyleOptionGraphicsItem,
    QVBoxLayout,
    QWidget,
)

from app.annotate.document import AnnotationEditor, AnnotationError, AnnotationStore, Shape
from app.gui.image_view import ImageView
from app.gui.tasks import run_in_background
from engine.datasets.types import Sample

TOOLS = ("pan", "box", "polygon", "brush", "eraser", "segment")
TOOL_KEYS = {"pan": "Esc", "box": "B", "polygon": "P", "brush": "R", "eraser": "E", "segment": "S"}
PROPOSAL_COLOR = QColor(0, 200, 255, 110)


def _color(name: str) -> QColor:
    # One stable colour per class name, independent of the order classes appear in.
    h = (sum(ord(c) * 31 ** i for i, c in enumerate(name)) % 360)
    return QColor.fromHsv(h, 200, 255, 255)


class AnnotationLayer(QGraphicsObject):
    """Shapes of the current image plus the gesture in progress; mouse input in image pixels."""

    box_drawn = Signal(float, float, float, float)
    polygon_closed = Signal(list)
    stroke_done = Signal(list, bool)  # points, erase
    prompt_point = Signal(float, float, bool)  # x, y, positive
    prompt_box = Signal(float, float, float, float)

    def __init__(self) -> None:
        super().__init__()
        self.tool = "pan"
        self.brush_radius = 6.0
        self._size = (0, 0)
        self._shapes: list[tuple[Shape, QImage | None]] = []
        self._proposal: QImage | None = None
        self._drag_start: QPointF | None = None
        self._drag_now: QPointF | None = None
        self._polygon: list[QPointF] = []
        self._stroke: list[QPointF] = []
        self.setZValue(50)
        self.setAcceptHoverEvents(True)

    # ---- content
    def set_image_size(self, width: int, height: int) -> None:
        self.prepareGeometryChange()
        self._size = (width, height)
        self._polygon, self._stroke, self._proposal = [], [], None

    def set_shapes(self, shapes: list[Shape]) -> None:
        w, h = self._size
        rendered = []
        for s in shapes:
            image = None
            if s.kind == "mask" and w and h:
                m = s.mask((h, w))
                c = _color(s.class_name)
                rgba = np.zeros((h, w, 4), np.uint8)
                rgba[m] = (c.red(), c.green(), c.blue(), 120)
                image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
            rendered.append((s, image))
        self._shapes = rendered
        self.update()

    def set_proposal(self, mask: np.ndarray | None) -> None:
        if mask is None:
            self._proposal = None
        else:
            h, w = mask.shape
            rgba = np.zeros((h, w, 4), np.uint8)
            rgba[mask] = (PROPOSAL_COLOR.red(), PROPOSAL_COLOR.green(), PROPOSAL_COLOR.blue(), PROPOSAL_COLOR.alpha())
            self._proposal = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        self.update()

    def set_tool(self, tool: str) -> None:
        self.tool = tool
        self._polygon, self._stroke = [], []
        self._drag_start = self._drag_now = None
        # With "pan" every press goes to the view (pan/zoom); any drawing tool takes the mouse.
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton if tool == "pan" else
                                     Qt.MouseButton.LeftButton | Qt.MouseButton.RightButton)
        self.update()

    # ---- QGraphicsItem
    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, float(self._size[0]), float(self._size[1]))

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        pen_w = 0  # cosmetic: one screen pixel whatever the zoom
        for shape, image in self._shapes:
            c = _color(shape.class_name)
            painter.setPen(QPen(c, pen_w))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            if image is not None:
                painter.drawImage(QPointF(0, 0), image)
            elif shape.kind == "box":
                (x0, y0), (x1, y1) = shape.points
                painter.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))
            elif shape.kind == "polygon":
                path = QPainterPath(QPointF(*shape.points[0]))
                for x, y in shape.points[1:]:
                    path.lineTo(x, y)
                path.closeSubpath()
                painter.setBrush(QBrush(QColor(c.red(), c.green(), c.blue(), 60)))
                painter.drawPath(path)
        if self._proposal is not None:
            painter.drawImage(QPointF(0, 0), self._proposal)
        painter.setPen(QPen(QColor(255, 255, 0), pen_w, Qt.PenStyle.DashLine))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if self._drag_start is not None and self._drag_now is not None and self.tool in ("box", "segment"):
            painter.drawRect(QRectF(self._drag_start, self._drag_now).normalized())
        if self._polygon:
            path = QPainterPath(self._polygon[0])
            for p in self._polygon[1:]:
                path.lineTo(p)
            painter.drawPath(path)
        if self._stroke:
            painter.setPen(QPen(QColor(255, 255, 255, 160), 2 * self.brush_radius, Qt.PenStyle.SolidLine,
                                Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
            path = QPainterPath(self._stroke[0])
            for p in self._stroke[1:]:
                path.lineTo(p)
            painter.drawPath(path)

    def mousePressEvent(self, ev: QGraphicsSceneMouseEvent) -> None:
        p = ev.pos()
        if self.tool == "polygon":
            if ev.button() == Qt.MouseButton.RightButton or (
                    len(self._polygon) >= 3 and (self._polygon[0] - p).manhattanLength() < 4 * self._px()):
                self._close_polygon()
            else:
                self._polygon.append(p)
        elif self.tool in ("brush", "eraser"):
            self._stroke = [p]
        else:
            self._drag_start = self._drag_now = p
        ev.accept()
        self.update()

    def mouseMoveEvent(self, ev: QGraphicsSceneMouseEvent) -> None:
        if self.tool in ("brush", "eraser") and self._stroke:
            self._stroke.append(ev.pos())
        elif self._drag_start is not None:
            self._drag_now = ev.pos()
        self.update()

    def mouseReleaseEvent(self, ev: QGraphicsSceneMouseEvent) -> None:
        p = ev.pos()
        if self.tool in ("brush", "eraser") and self._stroke:
            pts = [(q.x(), q.y()) for q in self._stroke]
            self._stroke = []
            self.stroke_done.emit(pts, self.tool == "eraser")
        elif self._drag_start is not None:
            start, self._drag_start, self._drag_now = self._drag_start, None, None
            moved = (p - start).manhattanLength() > 3 * self._px()
            if self.tool == "box" and moved:
                self.box_drawn.emit(start.x(), start.y(), p.x(), p.y())
            elif self.tool == "segment":
                if moved:
                    self.prompt_box.emit(start.x(), start.y(), p.x(), p.y())
                else:
                    negative = (ev.button() == Qt.MouseButton.RightButton
                                or bool(ev.modifiers() & Qt.KeyboardModifier.ShiftModifier))
                    self.prompt_point.emit(p.x(), p.y(), not negative)
        self.update()

    def mouseDoubleClickEvent(self, ev: QGraphicsSceneMouseEvent) -> None:
        if self.tool == "polygon":
            self._close_polygon()

    def _close_polygon(self) -> None:
        pts = [(q.x(), q.y()) for q in self._polygon]
        self._polygon = []
        if len(pts) >= 3:
            self.polygon_closed.emit(pts)
        self.update()

    def _px(self) -> float:
        """Image pixels per screen pixel, so click tolerances feel the same at every zoom."""
        views = self.scene().views() if self.scene() else []
        if not views:
            return 1.0
        return 1.0 / max(abs(self.deviceTransform(views[0].viewportTransform()).m11()), 1e-6)


class AnnotationPanel(QWidget):
    """Tools, class, brush size, undo/redo, copy labels, and the segmenter's proposals."""

    tool_changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.tool_group = QButtonGroup(self)
        self.tool_buttons: dict[str, QPushButton] = {}
        for tool in TOOLS:
            b = QPushButton(f"{tool.capitalize()} [{TOOL_KEYS[tool]}]")
            b.setCheckable(True)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            self.tool_group.addButton(b)
            self.tool_buttons[tool] = b
            b.clicked.connect(lambda _c=False, t=tool: self.tool_changed.emit(t))
            row.addWidget(b)
        self.tool_buttons["pan"].setChecked(True)
        layout.addLayout(row)
        form = QFormLayout()
        self.class_combo = QComboBox()
        self.class_combo.setEditable(True)  # a new defect class is typed in
        self.class_combo.setInsertPolicy(QComboBox.InsertPolicy.InsertAtTop)
        form.addRow("Class", self.class_combo)
        self.brush_spin = QSpinBox()
        self.brush_spin.setRange(1, 200)
        self.brush_spin.setValue(6)
        form.addRow("Brush radius (px)", self.brush_spin)
        self.fineness_spin = QDoubleSpinBox()
        self.fineness_spin.setRange(0.0, 20.0)
        self.fineness_spin.setValue(1.0)
        self.fineness_spin.setToolTip("A kept proposal becomes polygons simplified to this tolerance (pixels); "
                                      "0 keeps it as a pixel mask")
        form.addRow("Polygon tolerance (px)", self.fineness_spin)
        layout.addLayout(form)
        edit = QHBoxLayout()
        self.undo_button = QPushButton("Undo [Ctrl+Z]")
        self.redo_button = QPushButton("Redo [Ctrl+Shift+Z]")
        self.copy_button = QPushButton("Copy labels from previous image")
        for b in (self.undo_button, self.redo_button, self.copy_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            edit.addWidget(b)
        layout.addLayout(edit)
        seg = QHBoxLayout()
        self.model_button = QPushButton("Segmenter model…")
        self.accept_button = QPushButton("Keep proposal [Enter]")
        self.reject_button = QPushButton("Reject [Del]")
        for b in (self.model_button, self.accept_button, self.reject_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            seg.addWidget(b)
        layout.addLayout(seg)
        find = QHBoxLayout()
        self.find_edit = QLineEdit()
        self.find_edit.setPlaceholderText("Find defects by description, e.g. \"hairline crack\" (Enter)")
        find.addWidget(self.find_edit)
        layout.addLayout(find)
        self.status = QLabel("Choose a tool. Segment: click a defect (Shift/right-click: not defect), or drag a box.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def class_name(self) -> str:
        return self.class_combo.currentText().strip() or "defect"

    def set_classes(self, names: list[str]) -> None:
        current = self.class_combo.currentText()
        self.class_combo.clear()
        self.class_combo.addItems(names or ["defect"])
        if current:
            self.class_combo.setCurrentText(current)


class AnnotationController(QObject):
    """Glue: the current image's editor, the layer on the view, the panel, and the promptable segmenter."""

    changed = Signal()  # the current image's shapes changed (and are saved)
    proposal_ready = Signal(float)  # predicted IoU of the new proposal

    def __init__(self, view: ImageView, panel: AnnotationPanel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.view, self.panel = view, panel
        self.layer = AnnotationLayer()
        view.view_box.addItem(self.layer)
        self.store: AnnotationStore | None = None
        self.editor: AnnotationEditor | None = None
        self.previous: AnnotationEditor | None = None
        self.segmenter = None  # engine.runtime.segmenter.PromptSegmenter, loaded on demand
        self._image_path: Path | None = None
        self._points: list[tuple[float, float]] = []
        self._labels: list[int] = []
        self._box: tuple[float, float, float, float] | None = None
        self._proposal: np.ndarray | None = None
        self._proposal_source = "segmenter"
        self._low_res: np.ndarray | None = None
        self.segmenter_dir: Path | None = None
        # Auto-prompt proposals waiting for a decision, per image key (from a propose_masks job).
        self.pending: dict[str, list[dict]] = {}
        panel.tool_changed.connect(self.set_tool)
        panel.undo_button.clicked.connect(self.undo)
        panel.redo_button.clicked.connect(self.redo)
        panel.copy_button.clicked.connect(self.copy_previous)
        panel.accept_button.clicked.connect(self.accept_proposal)
        panel.reject_button.clicked.connect(self.reject_proposal)
        panel.model_button.clicked.connect(self.choose_segmenter)
        panel.brush_spin.valueChanged.connect(lambda v: setattr(self.layer, "brush_radius", float(v)))
        self.layer.box_drawn.connect(self._on_box)
        self.layer.polygon_closed.connect(self._on_polygon)
        self.layer.stroke_done.connect(self._on_stroke)
        self.layer.prompt_point.connect(self._on_prompt_point)
        self.layer.prompt_box.connect(self._on_prompt_box)
        window = view.window()
        for tool, key in TOOL_KEYS.items():
            QShortcut(QKeySequence(key), window, activated=lambda t=tool: self.set_tool(t))
        QShortcut(QKeySequence.StandardKey.Undo, window, activated=self.undo)
        QShortcut(QKeySequence("Ctrl+Shift+Z"), window, activated=self.redo)
        QShortcut(QKeySequence("Return"), window, activated=self._on_return)
        QShortcut(QKeySequence("Delete"), window, activated=self.reject_proposal)

    def _on_return(self) -> None:
        # A window-wide Enter shortcut would swallow Enter in text fields (the description search, the class):
        # there it means "done typing", elsewhere "keep the proposal".
        focus = QApplication.focusWidget()
        if isinstance(focus, QLineEdit):
            focus.returnPressed.emit()
        else:
            self.accept_proposal()

    # ---- dataset and image
    def set_dataset(self, root: Path, class_names: list[str]) -> None:
        self.store = AnnotationStore(root)
        self.editor = self.previous = None
        self.panel.set_classes(class_names)

    def show_image(self, key: str, path: Path, width: int, height: int, sample: Sample | None = None) -> None:
        """Edit `key`'s annotations; an image never annotated here starts from `sample`'s own labels."""
        if self.store is None:
            return
        self._clear_proposal()
        if self.editor is not None and self.editor.ann.key != key:
            self.previous = self.editor
        try:
            self.editor = AnnotationEditor(self.store, self.store.load(key, width, height, sample))
        except AnnotationError as exc:
            self.editor = None
            self.panel.status.setText(str(exc))
            return
        self._image_path = Path(path)
        self.layer.set_image_size(width, height)
        self.layer.set_shapes(self.editor.shapes)
        self._show_pending()
        if self.segmenter is not None and self.layer.tool == "segment":
            seg, p = self.segmenter, self._image_path
            run_in_background(lambda: seg.embed_path(p), lane="segmenter")  # warm the cache for the first click

    def prefetch(self, paths: list[Path]) -> None:
        """Encode the next images while the engineer looks at this one."""
        if self.segmenter is not None and paths:
            self.segmenter.prefetch([str(p) for p in paths])

    # ---- tools
    def set_tool(self, tool: str) -> None:
        self.layer.set_tool(tool)
        self.panel.tool_buttons[tool].setChecked(True)
        if tool == "segment" and self.segmenter is None:
            self.panel.status.setText("Choose a segmenter model (a folder with encoder.onnx and decoder.onnx).")

    def _apply(self, fn: Callable[..., object], *args: object) -> None:
        if self.editor is None:
            return
        try:
            fn(*args)
        except AnnotationError as exc:
            self.panel.status.setText(str(exc))
            return
        except OSError as exc:
            self.panel.status.setText(f"NOT saved: {exc}")
            return
        self.layer.set_shapes(self.editor.shapes)
        self.changed.emit()

    def _on_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        if self.editor is not None:
            self._apply(self.editor.add_box, x0, y0, x1, y1, self.panel.class_name())

    def _on_polygon(self, points: list) -> None:
        if self.editor is not None:
            self._apply(self.editor.add_polygon, points, self.panel.class_name())

    def _on_stroke(self, points: list, erase: bool) -> None:
        if self.editor is not None:
            self._apply(self.editor.paint, points, self.layer.brush_radius, self.panel.class_name(), erase)

    def undo(self) -> None:
        if self.editor is not None:
            self._apply(self.editor.undo)

    def redo(self) -> None:
        if self.editor is not None:
            self._apply(self.editor.redo)

    def copy_previous(self) -> None:
        if self.editor is not None and self.previous is not None:
            self._apply(self.editor.copy_from, self.previous.ann)

    # ---- the promptable segmenter
    def choose_segmenter(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.panel, "Segmenter model folder")
        if folder:
            self.load_segmenter(Path(folder))

    def load_segmenter(self, folder: Path) -> None:
        from engine.runtime.segmenter import PromptSegmenter

        def done(seg: object) -> None:
            self.segmenter = seg
            self.segmenter_dir = folder
            self.panel.status.setText(f"Segmenter {folder.name} ready ({seg.family}).")

        run_in_background(lambda: PromptSegmenter(folder), done, self.panel.status.setText, lane="segmenter")

    def _on_prompt_point(self, x: float, y: float, positive: bool) -> None:
        self._points.append((x, y))
        self._labels.append(1 if positive else 0)
        self._predict()

    def _on_prompt_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self._box = (x0, y0, x1, y1)
        self._predict()

    def _predict(self) -> None:
        if self.segmenter is None or self._image_path is None:
            self.panel.status.setText("Choose a segmenter model first.")
            return
        seg, path = self.segmenter, self._image_path
        points, labels, box, low_res = list(self._points), list(self._labels), self._box, self._low_res
        key = self.editor.ann.key if self.editor else None

        def run() -> tuple[str | None, object]:
            emb = seg.embed_path(path)
            return key, seg.predict(emb, points, labels, box, mask_input=low_res)

        run_in_background(run, self._on_prediction, self.panel.status.setText, lane="segmenter")

    def _on_prediction(self, result: tuple[str | None, object]) -> None:
        key, pred = result
        if self.editor is None or key != self.editor.ann.key:
            return  # the engineer moved on
        self._proposal = pred.mask
        self._proposal_source = "segmenter"
        self._low_res = pred.low_res_logits
        self.layer.set_proposal(pred.mask)
        self.panel.status.setText(f"Proposal: predicted IoU {pred.score:.2f}. Enter keeps it, more clicks refine it.")
        self.proposal_ready.emit(float(pred.score))

    # ---- auto-prompt proposals (a propose_masks job's output)
    def set_pending(self, items: dict[str, list[dict]]) -> int:
        self.pending = {k: list(v) for k, v in items.items() if v}
        self._show_pending()
        return sum(map(len, self.pending.values()))

    def _show_pending(self) -> None:
        if self.editor is None or self._proposal is not None:
            return
        queue = self.pending.get(self.editor.ann.key)
        if not queue:
            return
        from pycocotools import mask as mask_utils

        item = queue[0]
        rle = item["rle"]
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
        if mask.shape != (self.editor.ann.height, self.editor.ann.width):
            queue.pop(0)  # made for another version of this image: not shown
            return
        self._proposal, self._proposal_source = mask, "auto-prompt"
        self.layer.set_proposal(mask)
        self.panel.status.setText(f"Proposal from the anomaly map ({len(queue)} left on this image, peak "
                                  f"{item['prompt']['peak']:.2f}, IoU {item['score']:.2f}): Enter keeps it, "
                                  "Del rejects it, clicks with the Segment tool refine it.")

    def _next_pending(self) -> None:
        if self.editor is not None and self._proposal_source == "auto-prompt":
            queue = self.pending.get(self.editor.ann.key)
            if queue:
                queue.pop(0)

    def accept_proposal(self) -> None:
        if self._proposal is None:
            return
        if self.editor is not None:
            fineness = self.panel.fineness_spin.value()
            if fineness > 0 and self._proposal.any():
                from engine.runtime.segmenter import mask_to_polygons

                polygons = [p.tolist() for p in mask_to_polygons(self._proposal, fineness)]
                self._apply(self.editor.add_polygons, polygons, self.panel.class_name(), self._proposal_source)
            else:
                self._apply(self.editor.add_mask, self._proposal, self.panel.class_name(), self._proposal_source)
        self.reject_proposal()

    def reject_proposal(self) -> None:
        self._next_pending()
        self._clear_proposal()
        self._show_pending()

    def _clear_proposal(self) -> None:
        """Drop the proposal on screen and the prompts behind it (an auto-prompt one stays queued)."""
        self._points, self._labels, self._box = [], [], None
        self._proposal = self._low_res = None
        self._proposal_source = "segmenter"
        self.layer.set_proposal(None)

    def shapes(self) -> list[Shape]:
        return self.editor.shapes if self.editor else []

