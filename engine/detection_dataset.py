"""Run a detector over every image of a dataset: the engine job behind the workbench's Model > Detect.

Writes the one detections schema (engine.detections) keyed like the workbench's browser (engine.datasets.keys), with
each image's detection split and labelled boxes from the detection view (engine.datasets.detection, the view training
and `defectscope eval` use), so the workbench can tell hits, false alarms and misses without loading labels itself.
Every image is searched, labelled or not: auto-labelling a folder without a single box is one of the uses.
"""

from __future__ import annotations

from pathlib import Path

from engine.datasets import load_dataset
from engine.datasets.detection import DetectionSample, load_detection_set
from engine.datasets.keys import sample_key
from engine.datasets.types import LoadIssue
from engine.detecting import Detected, detect_images
from engine.detections import DetectionItem, Truth, read_detections, write_detections
from engine.errors import DatasetError, DefectScopeError
from engine.jobs.kinds_detector import DetectDatasetParams
from engine.jobs.registry import Progress
from engine.runtime.detector import Detector
from engine.runtime.open_detector import detector_for

MAX_NOTED_ISSUES = 20  # labelling problems listed one by one in the notes; the rest are counted


def detect_dataset(model_dir: str | Path, data_root: str | Path, out_dir: str | Path, category: str | None = None,
                   device: str = "auto", progress: Progress | None = None,
                   prompts: str | Path | None = None, detector: Detector | None = None) -> Path:
    """Detect in every image of the dataset at `data_root` into OUT_DIR/detections.json; returns its path.

    An image the detection view labels gets its `truth` (an empty one for a labelled clean image) and `split`;
    others get neither. Unreadable images land in `errors` under their key, naming the file. `prompts`: an
    open-set detector searches for the classes of this prompts file (engine.class_prompts); `detector`: an opened
    detector to run instead of opening `model_dir` (an open-set one asking for example-box queries)."""
    detector = detector or detector_for(model_dir, device, prompts)
    root = Path(data_root)
    ds = load_dataset(root, category=category)
    if not ds.samples:
        raise DefectScopeError(f"{root}: no images to search" + (f" in category '{category}'" if category else ""))
    notes: list[str] = []
    view = _detection_view(root, category, set(ds.issues), notes)
    errors = {sample_key(root, issue.path): issue.reason for issue in ds.issues}
    items: dict[str, DetectionItem] = {}
    keys = [sample_key(root, s) for s in ds.samples]
    for r in detect_images(detector, [s.image_path for s in ds.samples], progress,
                           lambda d, t: f"searched {d}/{t} images"):
        key = keys[r.index]
        if not isinstance(r, Detected):
            errors[key] = r.error
            continue
        labelled = view.get(Path(r.path).resolve())
        truth = None if labelled is None else Truth(labelled[0].boxes, labelled[1])
        items[key] = DetectionItem(
            path=str(r.path), boxes=r.boxes, scores=r.scores, classes=[detector.classes[int(c)] for c in r.classes],
            split=None if labelled is None else labelled[0].split, latency_ms=r.latency_ms, truth=truth)
    if not items:
        raise DefectScopeError(f"{root}: none of the {len(ds.samples)} images could be read "
                               f"(first: {next(iter(errors.values()), 'unknown')})")
    # the detector's own notes are known only after it has run (tiling is noted when an image needed it)
    return write_detections(out_dir, model=model_dir, classes=detector.classes, threshold=detector.score_threshold,
                            provider=detector.provider, items=items, errors=errors, data=root, category=category,
                            notes=[*detector.notes, *notes])


def _detection_view(root: Path, category: str | None, known: set[LoadIssue], notes: list[str]
                    ) -> dict[Path, tuple[DetectionSample, list[str]]]:
    """Resolved image path -> (its detection sample, its box class names). A set without a single box has no
    truth at all (a folder to auto-label), which is a note, not an error."""
    try:
        data = load_detection_set(root, category=category)
    except DatasetError as exc:
        notes.append(f"no labelled boxes to compare with ({exc})")
        return {}
    # issues of the plain load are already per-image errors; these are the labelling problems on top
    issues = [str(i) for i in data.issues if i not in known]
    notes.extend(issues[:MAX_NOTED_ISSUES])
    if len(issues) > MAX_NOTED_ISSUES:
        notes.append(f"... and {len(issues) - MAX_NOTED_ISSUES} more labelling problems")
    return {Path(s.image_path).resolve(): (s, [data.classes[int(k)] for k in s.labels]) for s in data.samples}


def detect_job(params: DetectDatasetParams, progress: Progress) -> dict:
    path = detect_dataset(params.model, params.data, params.out, params.category, params.device, progress,
                          params.prompts)
    done = read_detections(path.parent)
    return {"detections": str(path), "n_images": len(done.items), "n_errors": len(done.errors),
            "provider": done.provider, "notes": done.notes}
