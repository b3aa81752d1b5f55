"""Open-set search in the workbench: find defect classes typed by name ("find: rolled-in scale") over the open
dataset with the active open-set detector (the engine's detect_dataset job with a prompts folder), "find similar"
to the box drawn last (its visual prototype, searched over every image here: the torch-free runtime), the
phrasings of the dataset's classes (editable, kept per dataset), and Model ▸ Train open-set detector on the labels.

The hits are ordinary detections: the Detect dock draws them, thresholds them live and accepts them as annotations;
this dock lists the images with hits, best first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtWidgets import QDialog, QWidget

from app.gui.features.base import Feature, MenuEntry
from app.gui.find_panel import FindPanel, PhrasingsDialog
from engine.class_prompts import PROMPTS_FILE, read_prompts, spoken, write_prompts
from engine.client import JobView
from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.home import default_data_home

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

OPEN_DETECTOR_KIND = "open_detector"
SIMILAR_CLASS = "similar"  # the name of a "find similar" query when the drawn box has no class


def _tag(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def _same(a: str, b: str) -> bool:
    return spoken(a).lower() == spoken(b).lower()


def asked_prompts(text: str, known: dict[str, list[str]]) -> dict[str, list[str]]:
    """The classes a find box asks for: comma-separated entries; an entry naming a known class (as written or as
    words) is searched by that class's phrasings, any other entry by its own words."""
    out: dict[str, list[str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name = next((k for k in known if _same(k, entry)), entry)
        out[name] = list(known.get(name) or [entry])
    return out


class OpenSetFeature(Feature):
    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.panel = FindPanel()
        self.panel.find_button.clicked.connect(lambda: self.find(self.panel.find_edit.text()))
        self.panel.find_edit.returnPressed.connect(lambda: self.find(self.panel.find_edit.text()))
        self.panel.similar_button.clicked.connect(lambda: self.find_similar())
        self.panel.phrasings_button.clicked.connect(self.edit_phrasings)
        self.panel.hit_chosen.connect(lambda key: window.browser.select_key(key))
        window.detection.detections_loaded.connect(lambda _n: self.refresh_hits())
        window.detection.panel.threshold_changed.connect(lambda _v: self.refresh_hits())
        window.dataset_loaded.connect(lambda _root: self.panel.set_hits([]))

    def dock_widget(self) -> QWidget:
        return self.panel

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "&Find defects by name…", self._focus_find, "Ctrl+F", separator_before=True),
                MenuEntry("&Model", "Find &similar to the box drawn last", lambda: self.find_similar()),
                MenuEntry("&Model", "Train &open-set detector on the labels", lambda: self.train_open_detector())]

    def _focus_find(self) -> None:
        dock = self.panel.parentWidget()
        if dock is not None:
            dock.raise_()
        self.panel.find_edit.setFocus()

    # ----------------------------------------------------------------- the dataset's phrasings
    def prompts_folder(self) -> Path | None:
        ds = self.window.dataset
        return default_data_home() / "class_prompts" / f"{ds.root.name}-{_tag(ds.root)}" if ds else None

    def dataset_prompts(self) -> dict[str, list[str]]:
        """The phrasings edited for this dataset, else the active open-set detector's, plus the dataset's classes
        (by name) that neither describes."""
        w = self.window
        prompts: dict[str, list[str]] = {}
        info = w.models.model_info
        if info is not None and info.kind == OPEN_DETECTOR_KIND:
            prompts.update({k: list(v) for k, v in (info.metadata.get("prompts") or {}).items()})
        folder = self.prompts_folder()
        if folder is not None and (folder / PROMPTS_FILE).is_file():
            try:
                prompts.update(read_prompts(folder))
            except DefectScopeError as exc:
                w.show_error(f"Class phrasings: {exc}")
        for name in (w.dataset.class_names if w.dataset else []):
            prompts.setdefault(name, [spoken(name)])
        return prompts

    def edit_phrasings(self) -> None:
        w = self.window
        if w.dataset is None:
            w.show_error("Open a dataset first: phrasings are kept per dataset.")
            return
        dialog = PhrasingsDialog(self.dataset_prompts(), w)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        self.save_phrasings(dialog.prompts())

    def save_phrasings(self, prompts: dict[str, list[str]]) -> None:
        folder = self.prompts_folder()
        if folder is None:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_prompts(folder / PROMPTS_FILE, prompts)
        except OSError as exc:
            self.window.show_error(f"Phrasings NOT saved: {exc}")
            return
        self.window.status_message.emit(f"Phrasings of {len(prompts)} classes saved.")

    # ----------------------------------------------------------------- find by name
    def _open_detector(self) -> tuple[Any, Path] | None:
        w = self.window
        info, model_dir = w.models.model_info, w.models.model_dir
        if w.dataset is None or info is None or model_dir is None or info.kind != OPEN_DETECTOR_KIND:
            w.show_error("Open a dataset and make an open-set detector the active model first (Model ▸ Train "
                         "open-set detector, or its folder in the Models panel): a closed-set detector knows only "
                         "its trained classes.")
            return None
        return info, model_dir

    def find(self, text: str) -> None:
        """Search the open dataset for the classes typed (comma-separated) in the engine."""
        w = self.window
        if self._open_detector() is None:
            return
        asked = asked_prompts(text, self.dataset_prompts())
        if not asked:
            w.status_message.emit("Type what to find, e.g. rolled-in scale, scratches.")
            return
        body = json.dumps(asked, sort_keys=True)
        folder = default_data_home() / "find" / hashlib.sha256(body.encode()).hexdigest()[:16]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_prompts(folder / PROMPTS_FILE, asked)
        except OSError as exc:
            w.show_error(f"Cannot write the search: {exc}")
            return
        params = {"model": w.link.engine_path(w.models.model_dir, "model"), "data": str(w.dataset.root),
                  "prompts": str(folder)}  # a folder: a remote engine is sent it like any other
        if w.category:
            params["category"] = w.category
        w.link.submit("detect_dataset", params, on_finished=self._on_found,
                      on_error=lambda msg: w.show_error(f"Find could not start: {msg}"))
        self.panel.status.setText(f"Searching for {', '.join(asked)} in the engine…")

    def _on_found(self, job: JobView) -> None:
        if job.state == "succeeded":
            self.panel.status.setText("Found: the hits are drawn in the Detect dock; move its threshold to "
                                      "see more or fewer.")
        elif job.state == "failed":
            self.panel.status.setText(f"Find failed: {job.error}")
        self.window.detection.on_detect_finished(job)

    # ----------------------------------------------------------------- find similar
    def last_drawn_box(self) -> tuple[np.ndarray, str] | None:
        """The shown image's box drawn last (its corners and class)."""
        editor = self.window.annotation.controller.editor
        if editor is None:
            return None
        for shape in reversed(editor.shapes):
            if shape.kind == "box" and shape.points:
                pts = np.asarray(shape.points, np.float32)
                return np.concatenate([pts.min(0), pts.max(0)]), shape.class_name or SIMILAR_CLASS
        return None

    def find_similar(self) -> None:
        """The box drawn last on the shown image becomes a visual prototype; every image of the dataset is
        searched for regions like it, here (torch-free), and the hits shown as detections."""
        w = self.window
        opened = self._open_detector()
        if opened is None:
            return
        info, model_dir = opened
        key = w.shown_key
        drawn = self.last_drawn_box()
        if key is None or key not in w.samples or drawn is None:
            w.show_error("Draw a box around a defect on the shown image (Annotate dock, box tool) first.")
            return
        box, name = drawn
        ds, category = w.dataset, w.category
        image_path = w.samples[key].image_path
        out = default_data_home() / "find_similar" / f"{ds.root.name}-{_tag(ds.root)}"

        def run() -> Path:
            from engine.detection_dataset import detect_dataset
            from engine.runtime.open_detector import OpenDetector

            detector = OpenDetector(info, "cpu")
            asked = detector.ask(detector.prototype_queries({name: [(read_image(image_path), box)]}))
            return detect_dataset(model_dir, ds.root, out, category, detector=asked).parent

        self.panel.status.setText(f"Searching every image for regions like the '{name}' box…")
        w.background(run, lambda folder: self._on_similar(folder, name),
                     lambda msg: self.panel.status.setText(f"Find similar failed: {msg}"))

    def _on_similar(self, folder: Path, name: str) -> None:
        self.panel.status.setText(f"Regions like the '{name}' box: drawn in the Detect dock, ranked below.")
        self.window.detection.load_detections(folder)

    # ----------------------------------------------------------------- hits
    def refresh_hits(self) -> None:
        """The images with a box at or above the Detect dock's threshold, best box first."""
        w = self.window
        dets = w.detection.detections
        if dets is None:
            self.panel.set_hits([])
            return
        threshold = w.detection.threshold
        hits = []
        for key, item in dets.items.items():
            kept = item.above(threshold)
            if len(kept):
                sample = w.samples.get(key)
                name = sample.image_path.name if sample is not None else key
                hits.append((key, name, float(item.scores[kept].max()), len(kept)))
        hits.sort(key=lambda h: -h[2])
        self.panel.set_hits(hits)

    # ----------------------------------------------------------------- training
    def train_open_detector(self) -> None:
        """An open-set detector on this dataset's boxes (plus those drawn or accepted here), with the dataset's
        phrasings; it joins the Models panel and becomes the active model when the job succeeds."""
        w = self.window
        if w.dataset is None:
            w.show_error("Open a dataset with boxes (or draw some in the Annotate dock) first.")
            return
        prompts = self.dataset_prompts()
        folder = self.prompts_folder()

        def prepare() -> Path:
            assert folder is not None
            folder.mkdir(parents=True, exist_ok=True)
            write_prompts(folder / PROMPTS_FILE, prompts)
            return w.detection.detector_training_data()

        def submit(data: Path) -> None:
            w.link.submit("train_open_detector", {"data": str(data), "prompts": str(folder)},
                          on_finished=self._on_trained,
                          on_error=lambda msg: w.show_error(f"Open-set detector training could not start: {msg}"))
            w.status_message.emit("Training an open-set detector in the engine (see Jobs).")

        w.background(prepare, submit, lambda msg: w.show_error(f"Open-set detector training data: {msg}"))

    def _on_trained(self, job: JobView) -> None:
        w = self.window
        if job.state == "succeeded":
            w.link.fetch_model(job, w.models.set_model,
                               lambda msg: w.show_error(f"Cannot fetch the open-set detector: {msg}"))
        elif job.state == "failed":
            w.show_error(f"Open-set detector training failed: {job.error}")
