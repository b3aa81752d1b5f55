"""Model ▸ Synthesize defects (issue 18): synthetic defective images with their masks, curated by eye before they
train.

The dialog (app/gui/synthesis_dialog.py) submits a `synthesize` job (procedural cut-paste of the dataset's real
defects) or a `sample_generator` job (a trained Defect-Gen generator); either writes a synthetic set as its
`synthetic_set` artifact. The set is fetched as every job output is (in place from a local engine, downloaded and
checked from a remote one) and shown in the Synthetic dock's gallery (app/gui/synthetic_gallery.py). Apply runs
`curate_synthetic_set` on the engine's set, named by its artifact reference so it works on any engine, with the
rejected samples; a downloaded copy here is curated the same way. Then the set is offered for training: where it
is, and the defect segmentation command that takes it as extra data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDockWidget

from app.gui.features.base import Feature, MenuEntry
from app.gui.synthesis_dialog import GENERATOR, SynthesisDialog, generator_choices
from app.gui.synthetic_gallery import GalleryItem, SyntheticGallery, render_thumbnail
from app.gui.tasks import describe_error
from engine.client import JobView
from engine.server.layout import artifact_ref
from engine.synthesis.curate import reject_samples
from engine.synthesis.synthetic_set import MANIFEST_FILE, manifest_samples, read_manifest

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow

ARTIFACT = "synthetic_set"  # the output of both synthesize and sample_generator
CURATE = "curate_synthetic_set"
THUMB_BATCH = 16  # thumbnails rendered per background task: the first ones show while the rest decode


class SynthesisFeature(Feature):
    set_shown = Signal(str)  # the local folder of the set the gallery now shows
    thumbnails_loaded = Signal(int)  # every thumbnail of the shown set is rendered (their number)
    curated = Signal(object)  # the curate job (JobView), once the gallery shows the curated set

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.gallery = SyntheticGallery()
        self.gallery.apply_requested.connect(self.apply)
        self.job: JobView | None = None  # the synthesis job whose set is shown
        self.folder: Path | None = None  # that set's folder on this computer
        self.offer = ""  # the last "ready for training" message
        self._generation = 0  # a set shown later makes answers about an earlier one stale
        self._pending: tuple[JobView, Path, list[str]] | None = None  # a curate job under way: for what

    def dock_widget(self) -> SyntheticGallery:
        return self.gallery

    def menu_entries(self) -> list[MenuEntry]:
        return [MenuEntry("&Model", "S&ynthesize defects…", self.open_dialog, separator_before=True)]

    # ----------------------------------------------------------------- synthesis
    def dialog(self) -> SynthesisDialog:
        """The dialog on the open dataset (its categories, its defect types with masks) and the generators the
        engine trained."""
        w = self.window
        ds = w.dataset
        types = sorted({s.defect_type for s in ds.samples if s.mask_path is not None and s.defect_type
                        and s.defect_type != "good"}) if ds is not None else []
        # A remote engine's paths are its own: they cannot be checked on this computer.
        return SynthesisDialog(ds.root if ds is not None else None, ds.categories if ds is not None else [], types,
                               generator_choices(w.link.jobs), w, check_paths=w.link.is_local)

    def open_dialog(self) -> None:
        dialog = self.dialog()
        if dialog.exec():
            self.submit(*dialog.job())

    def submit(self, kind: str, params: dict[str, Any]) -> None:
        w = self.window
        what = "Sampling the defect generator" if kind == GENERATOR else "Synthesizing defects"
        w.link.submit(kind, params, on_finished=self._on_synthesized,
                      on_error=lambda m: w.show_error(f"{what} could not start: {m}"))
        w.status_message.emit(f"{what} in the engine (see Jobs); the gallery opens when it is done…")

    def _on_synthesized(self, job: JobView) -> None:
        if job.state == "failed":
            self.window.show_error(f"Synthesis failed: {job.error}")
        elif job.state == "succeeded":
            self.show_set(job)
        else:
            self.window.status_message.emit(f"Synthesis job {job.id} {job.state}.")

    def show_set(self, job: JobView) -> None:
        """The synthetic set of a succeeded synthesize / sample_generator job in the gallery."""
        w = self.window
        self._generation += 1
        generation = self._generation
        w.link.fetch_artifact_dir(job, ARTIFACT, lambda folder: self._read(generation, job, folder),
                                  lambda m: w.show_error(f"Cannot fetch the synthetic set of job {job.id}: {m}"))

    def _read(self, generation: int, job: JobView, folder: Path) -> None:
        w = self.window
        w.background(lambda: _gallery_items(folder), lambda found: self._show(generation, job, folder, *found),
                     lambda m: w.show_error(f"Cannot read the synthetic set in {folder}: {m}"))

    def _show(self, generation: int, job: JobView, folder: Path, items: list[GalleryItem], manifest: dict[str, Any],
              after: str = "") -> None:
        if generation != self._generation:
            return
        self.job, self.folder = job, folder
        counts = _counts(manifest)
        header = after or (f"{len(items)} synthetic images ({counts}) from job {job.id[:8]}, in {folder}. Untick "
                           "the ones that must not train, then Apply.")
        self.gallery.set_items(folder, items, header)
        dock = self.gallery.parentWidget()
        if isinstance(dock, QDockWidget):
            dock.show()
            dock.raise_()
        self._load_thumbnails(generation, folder, items)
        self.set_shown.emit(str(folder))

    def _load_thumbnails(self, generation: int, folder: Path, items: list[GalleryItem]) -> None:
        batches = [items[i:i + THUMB_BATCH] for i in range(0, len(items), THUMB_BATCH)]
        left = [len(batches)]
        if not batches:
            self.thumbnails_loaded.emit(0)
            return

        def render(batch: list[GalleryItem]) -> list[tuple[str, Any, str]]:
            out = []
            for item in batch:
                try:
                    out.append((item.image, render_thumbnail(folder, item), ""))
                except Exception as exc:  # one unreadable sample is said on its item, the others still show
                    out.append((item.image, None, describe_error(exc)))
            return out

        def show(results: list[tuple[str, Any, str]]) -> None:
            if generation != self._generation:
                return
            for image, rgb, reason in results:
                if rgb is not None:
                    self.gallery.set_thumbnail(image, rgb)
                else:
                    self.gallery.set_unreadable(image, reason)
            left[0] -= 1
            if left[0] == 0:
                self.thumbnails_loaded.emit(len(items))

        for batch in batches:
            self.window.background(lambda b=batch: render(b), show, self.window.status_message.emit)

    # ----------------------------------------------------------------- curation
    def apply(self) -> None:
        """Remove the rejected samples from the set (on the engine, and from the copy here), then offer it."""
        w = self.window
        if self.job is None or self.folder is None:
            w.status_message.emit("No synthetic set is shown: Model ▸ Synthesize defects… makes one.")
            return
        rejected = self.gallery.rejected()
        if not rejected:  # nothing to remove: offered as it is
            job, folder = self.job, self.folder
            w.background(lambda: read_manifest(folder), lambda manifest: self._offer(job, folder, manifest),
                         lambda m: w.show_error(f"Cannot read the synthetic set in {folder}: {m}"))
            return
        self.gallery.set_busy(True)
        self._pending = (self.job, self.folder, rejected)
        # The engine's set, by reference: the same request works on a local and a remote engine.
        w.link.submit(CURATE, {"folder": artifact_ref(self.job.id, ARTIFACT), "reject": rejected},
                      on_finished=self._on_curated, on_error=self._curate_refused)
        w.status_message.emit(f"Removing {len(rejected)} rejected samples in the engine…")

    def _curate_refused(self, message: str) -> None:
        self._pending = None
        self.gallery.set_busy(False)
        self.window.show_error(f"Removing the rejected samples could not start: {message}")

    def _on_curated(self, curate_job: JobView) -> None:
        w = self.window
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if curate_job.state != "succeeded":
            self.gallery.set_busy(False)
            if curate_job.state == "failed":
                w.show_error(f"Removing the rejected samples failed: {curate_job.error}")
            return
        job, folder, rejected = pending
        # A remote engine's set was downloaded here: this copy loses the same samples (what `defectscope train
        # segmentation --extra` would read). A local engine's set is the engine's own folder, already curated.
        copy = not w.link.is_local

        def sync() -> tuple[list[GalleryItem], dict[str, Any]]:
            if copy:
                reject_samples(folder, rejected)
            return _gallery_items(folder)

        def shown(found: tuple[list[GalleryItem], dict[str, Any]]) -> None:
            self.gallery.set_busy(False)
            items, manifest = found
            if self.job is not None and self.job.id != job.id:  # another set came to the gallery meanwhile
                w.status_message.emit(f"{len(rejected)} samples removed from the set of job {job.id}.")
                self.curated.emit(curate_job)
                return
            self._generation += 1
            self._show(self._generation, job, folder, items, manifest, after=self._offer_text(job, folder, manifest))
            self._announce()
            self.curated.emit(curate_job)

        def failed(message: str) -> None:
            self.gallery.set_busy(False)
            w.show_error(f"The engine removed the rejected samples, but not the copy in {folder}: {message}")

        w.background(sync, shown, failed)

    def _offer(self, job: JobView, folder: Path, manifest: dict[str, Any]) -> None:
        self.gallery.set_header(self._offer_text(job, folder, manifest))
        self._announce()

    def _offer_text(self, job: JobView, folder: Path, manifest: dict[str, Any]) -> str:
        """Where the set is and how a defect segmentation model trains on it (the same donor draw, so no held-out
        defect was copied into training)."""
        w = self.window
        n = len(manifest.get("samples") or [])
        data = str(w.dataset.root) if w.dataset is not None else str(manifest.get("source") or "DATA")
        draw = ""
        if manifest.get("shots_per_type") is not None:
            draw = f" --shots-per-type {manifest['shots_per_type']} --shots-seed {manifest.get('shots_seed', 0)}"
        engine = "" if w.link.is_local else f" On the engine it is {artifact_ref(job.id, ARTIFACT)}."
        return (f"Synthetic set ready for training: {n} images ({_counts(manifest)}) in {folder}.{engine} Train "
                f"a defect segmentation model with it as extra data: defectscope train segmentation --data {data}"
                f"{draw} --extra {folder}")

    def _announce(self) -> None:
        self.offer = self.gallery.header.text()
        self.window.show_banner(self.offer, "info", tag="synthesis")
        self.window.status_message.emit(self.offer)


def _gallery_items(folder: Path) -> tuple[list[GalleryItem], dict[str, Any]]:
    """Runs on a pool thread: the set's samples as gallery items, and its manifest."""
    manifest = read_manifest(folder)
    rows = manifest_samples(manifest, folder / MANIFEST_FILE)
    return [GalleryItem(r["image"], r["mask"], r["type"], str(r.get("donor") or "")) for r in rows], manifest


def _counts(manifest: dict[str, Any]) -> str:
    per_type = manifest.get("per_type")
    if not isinstance(per_type, dict) or not per_type:
        return "no types"
    return ", ".join(f"{name} {n}" for name, n in sorted(per_type.items()))
