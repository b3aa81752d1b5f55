"""The models panel: models trained by the engine, plus model folders the user added from disk.

Engine models come from succeeded jobs whose kind declares a model output (`JobKind.model_output`, kept in sync
with `EngineLink.jobs_changed`): a new trainer kind shows here without a change to this file. Using one goes
through `EngineLink.fetch_model`, which is the job's own folder with a local engine and a verified download with a
remote one. Added folders are remembered in the GUI's ini file; they are read through the model-format owner
(`read_model_info`) off the GUI thread (the folder may sit on a slow network share).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.engine_link import EngineLink, gui_settings
from app.gui.tasks import run_in_background
from engine.client import JobView
from engine.jobs.registry import model_output
from engine.runtime import defect_segmentation_format
from engine.runtime.model_format import ModelInfo, read_model_info

FOLDERS_KEY = "models/folders"  # a JSON list: QSettings turns a one-element list into a plain string in ini
KindRole = int(Qt.ItemDataRole.UserRole) + 1  # "job" | "folder"
PayloadRole = int(Qt.ItemDataRole.UserRole) + 2  # the JobView, or the folder path as str
ERROR_COLOR = QColor(200, 30, 30)


KIND_NAMES = {"multimodal": "RGB + 3D (memory banks, cross-modal stand-ins)",
              "unified": "unified (one model for many products)",
              "defect_segmentation": "defect segmentation (one class per defect type, from masks)"}


def describe_metadata(meta: dict, kind: str | None = None) -> str:
    """A tooltip from a model's metadata (ModelInfo.metadata): what the model is and how it was trained."""
    tr = meta.get("training") or {}
    if kind is None:  # an engine job's result carries the metadata only
        kind = ("multimodal" if meta.get("format") == "defectscope.multimodal"
                else "unified" if meta.get("kind") == "anomaly/unified"
                else "defect_segmentation" if meta.get("format") == defect_segmentation_format.FORMAT else None)
    rows = [
        ("model", KIND_NAMES.get(kind or "")),
        ("products", ", ".join(meta.get("products") or []) or None),
        ("category", meta.get("category") or "(all)"),
        ("backbone", meta.get("backbone")),
        ("image size", meta.get("input_size")),
        ("resize", meta.get("resize")),
        ("scales", ", ".join(str(s) for s in meta.get("scales") or []) or None),
        ("memory bank", f"{tr['bank_size']} × {tr.get('feature_dim', '?')}" if "bank_size" in tr else None),
        ("trained on", f"{tr['n_train_images']} images" if "n_train_images" in tr else None),
        ("device", tr.get("device")),
        ("training time", f"{tr['seconds_total']:.1f} s" if isinstance(tr.get("seconds_total"), (int, float))
         else None),
        ("3D input", _three_d_input(meta) if kind == "multimodal" else None),
        ("fusion weights", _fusion_weights(meta) if kind == "multimodal" else None),
        ("dataset", meta.get("dataset_root")),
        ("created", meta.get("created")),
        ("version", meta.get("defectscope_version")),
    ]
    return "\n".join(f"{name}: {value}" for name, value in rows if value not in (None, ""))


def _three_d_input(meta: dict) -> str | None:
    """What the RGB + 3D model's 3D sensor delivered at training (the depth kind it detected), and its features."""
    if meta.get("geo_features") == "depth_image":
        kind = ((meta.get("depth") or {}).get("kind") or {}).get("description")
        return f"{kind or 'depth maps'} (geometry-image features)"
    return "xyz point clouds (FPFH)" if "format" in meta else None


def _fusion_weights(meta: dict) -> str | None:
    """The RGB + 3D model's fusion weights and how they were set."""
    fusion = meta.get("fusion") or {}
    w = fusion.get("weights")
    if not w:
        return "equal (model trained before fusion weights)"
    names = (("rgb", "RGB"), ("geo", "3D"), ("geo_pred", "distilled 3D"), ("rgb_pred", "distilled RGB"))
    return ", ".join(f"{name} {w[k]:.2f}" for k, name in names if k in w) + f" ({fusion.get('rule', '?')})"


class ModelsPanel(QWidget):
    """Models to use for inference and review. `model_activated(Path)` carries a local folder with model.onnx."""

    model_activated = Signal(Path)

    def __init__(self, link: EngineLink, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._link = link
        self._active: Path | None = None
        self._job_items: dict[str, QTreeWidgetItem] = {}
        self._folder_items: dict[str, QTreeWidgetItem] = {}

        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(True)
        self._engine_group = QTreeWidgetItem(self.tree, ["Trained by the engine"])
        self._folder_group = QTreeWidgetItem(self.tree, ["Model folders"])
        for group in (self._engine_group, self._folder_group):
            group.setFlags(Qt.ItemFlag.ItemIsEnabled)  # headings: not selectable, not usable
            font = group.font(0)
            font.setBold(True)
            group.setFont(0, font)
            group.setExpanded(True)

        self.use_button = QPushButton("Use")
        self.use_button.setToolTip("Use the selected model (downloads it first from a remote engine)")
        self.use_button.setEnabled(False)
        self.add_button = QPushButton("Add model folder…")
        self.add_button.setToolTip("Register a folder holding model.onnx and model.json")
        self.remove_button = QPushButton("Remove folder")
        self.remove_button.setToolTip("Forget the selected model folder (nothing is deleted on disk)")
        self.remove_button.setEnabled(False)
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)

        buttons = QHBoxLayout()
        buttons.addWidget(self.use_button)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tree)
        layout.addLayout(buttons)
        layout.addWidget(self.message_label)

        self.use_button.clicked.connect(self.use_selected)
        self.add_button.clicked.connect(self._browse)
        self.remove_button.clicked.connect(self._remove_selected)
        self.tree.itemActivated.connect(lambda item, _col: self._use(item))
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        link.jobs_changed.connect(self._on_jobs)

        for folder in self._load_folders():
            self._add_folder_item(Path(folder))
        self._on_jobs(link.jobs)
        self._update_titles()

    # ----------------------------------------------------------------------------------------- public

    def models(self) -> list[Path]:
        """Model folders known on this computer: added folders, and engine models whose folder is local
        (a local engine's job folders, or remote models already downloaded)."""
        paths: list[Path] = []
        for item in self._job_items.values():
            known = self._link.known_artifact_dir(item.data(0, PayloadRole))
            if known is not None:
                paths.append(known)
        paths.extend(Path(p) for p in self._folder_items)
        return paths

    def add_model_dir(self, path: Path | str) -> None:
        """Register a model folder (remembered across sessions); its model.json is read in the background."""
        path = Path(path).expanduser().absolute()
        if str(path) in self._folder_items:
            self._select(self._folder_items[str(path)])
            return
        item = self._add_folder_item(path)
        self._save_folders()
        self._select(item)

    @property
    def active_model(self) -> Path | None:
        return self._active

    def activate_row(self, row: int) -> None:
        """Use the row-th model as listed: engine models (newest first), then added folders."""
        items = [*(self._engine_group.child(i) for i in range(self._engine_group.childCount())),
                 *(self._folder_group.child(i) for i in range(self._folder_group.childCount()))]
        if not 0 <= row < len(items):
            raise IndexError(f"no model in row {row} ({len(items)} listed)")
        self._select(items[row])
        self._use(items[row])

    def use_selected(self) -> None:
        items = self.tree.selectedItems()
        if items:
            self._use(items[0])

    # ----------------------------------------------------------------------------------------- jobs

    def _on_jobs(self, jobs: list[JobView]) -> None:
        models = [j for j in jobs if j.state == "succeeded" and model_output(j.kind) is not None]
        wanted = {j.id for j in models}
        for job_id in [i for i in self._job_items if i not in wanted]:
            self._engine_group.removeChild(self._job_items.pop(job_id))
        # jobs arrive newest first; keep that order in the list
        for pos, job in enumerate(models):
            item = self._job_items.get(job.id)
            if item is None:
                item = QTreeWidgetItem()
                item.setData(0, KindRole, "job")
                self._engine_group.insertChild(pos, item)
                self._job_items[job.id] = item
            item.setData(0, PayloadRole, job)
            meta = (job.result or {}).get("metadata") or {}
            products = ", ".join((job.result or {}).get("products") or [])
            category = job.params.get("category") or meta.get("category") or products or "all categories"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.finished or job.created or 0))
            item.setText(0, f"{category} · {job.id} · {when}")
            item.setToolTip(0, describe_metadata(meta) if meta else f"{job.kind} job {job.id}")
        self._update_titles()
        self._update_buttons()

    # ----------------------------------------------------------------------------------------- folders

    def _add_folder_item(self, path: Path) -> QTreeWidgetItem:
        item = QTreeWidgetItem(self._folder_group, [f"{path.name} · reading…"])
        item.setData(0, KindRole, "folder")
        item.setData(0, PayloadRole, str(path))
        item.setToolTip(0, str(path))
        self._folder_items[str(path)] = item
        # The panel (and with it the item) may be gone when the answer comes: a window closed while reading.
        run_in_background(lambda: read_model_info(path), lambda info: self._folder_read(path, info),
                          lambda message: self._folder_unusable(path, message), guard=self._alive)
        self._update_titles()
        return item

    def _alive(self) -> bool:
        return shiboken6.isValid(self)

    def _folder_item(self, path: Path) -> QTreeWidgetItem | None:
        item = self._folder_items.get(str(path))
        return item if item is not None and shiboken6.isValid(item) else None

    def _folder_read(self, path: Path, info: ModelInfo) -> None:
        item = self._folder_item(path)
        if item is None:
            return
        category = info.metadata.get("category") or ", ".join(info.metadata.get("products") or []) or "all categories"
        item.setText(0, f"{category} · {path.name}")
        item.setToolTip(0, f"{path}\n{describe_metadata(info.metadata, info.kind)}")
        item.setForeground(0, self.palette().text())

    def _folder_unusable(self, path: Path, message: str) -> None:
        item = self._folder_item(path)
        if item is None:
            return
        item.setText(0, f"{path.name} · unusable")
        item.setToolTip(0, message)
        item.setForeground(0, ERROR_COLOR)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (model.onnx + model.json)")
        if folder:
            self.add_model_dir(folder)

    def _remove_selected(self) -> None:
        items = self.tree.selectedItems()
        if not items or items[0].data(0, KindRole) != "folder":
            return
        key = items[0].data(0, PayloadRole)
        self._folder_group.removeChild(self._folder_items.pop(key))
        self._update_titles()
        self._save_folders()
        self._update_buttons()

    def _load_folders(self) -> list[str]:
        raw = gui_settings().value(FOLDERS_KEY, "[]")
        try:
            folders = json.loads(str(raw))
        except json.JSONDecodeError:
            return []
        return [str(f) for f in folders if isinstance(f, str)] if isinstance(folders, list) else []

    def _save_folders(self) -> None:
        s = gui_settings()
        s.setValue(FOLDERS_KEY, json.dumps(list(self._folder_items)))
        s.sync()

    # ----------------------------------------------------------------------------------------- using

    def _use(self, item: QTreeWidgetItem) -> None:
        kind = item.data(0, KindRole)
        if kind == "folder":
            path = Path(item.data(0, PayloadRole))
            self._say(f"checking {path}…")
            # Checked off-thread: a folder registered long ago may be gone or be on an unmounted share.
            run_in_background(lambda: read_model_info(path), lambda _info: self._activate(path), self._fail,
                              guard=self._alive)
        elif kind == "job":
            job = item.data(0, PayloadRole)
            self._say(f"getting the model of job {job.id}…" if self._link.is_local
                      else f"downloading the model of job {job.id}…")
            self._link.fetch_model(job, self._activate, self._fail)

    def _activate(self, path: Path) -> None:
        self._active = path
        self._say(f"using {path}")
        for item in [*self._job_items.values(), *self._folder_items.values()]:
            font = QFont(item.font(0))
            kind, payload = item.data(0, KindRole), item.data(0, PayloadRole)
            mine = (Path(payload) == path) if kind == "folder" else (self._link.known_artifact_dir(payload) == path)
            font.setBold(mine)
            item.setFont(0, font)
        self.model_activated.emit(path)

    def _fail(self, message: str) -> None:
        self._say(message, error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.message_label.setStyleSheet(f"color: {ERROR_COLOR.name()};" if error else "")
        self.message_label.setText(text)

    def _select(self, item: QTreeWidgetItem) -> None:
        self.tree.setCurrentItem(item)
        self.tree.scrollToItem(item)

    def _update_titles(self) -> None:
        self._engine_group.setText(0, f"Trained by the engine ({len(self._job_items)})")
        self._folder_group.setText(0, f"Model folders ({len(self._folder_items)})")

    def _update_buttons(self) -> None:
        items = self.tree.selectedItems()
        kind = items[0].data(0, KindRole) if items else None
        self.use_button.setEnabled(kind in ("job", "folder"))
        self.remove_button.setEnabled(kind == "folder")
