"""The unlabelled pool pseudo boxes are made from, kept apart from every evaluation image; and its maps from an
anomaly model (the torch-free scorer; mutual scoring is trainers.agssp.mutual).

A pool is the folders the user gives, each searched recursively for every file the project's image reader takes;
each folder is one group (mutual scoring compares an image only with images of its own group: a hazelnut photo
says nothing about a steel strip). Images are de-duplicated by resolved path and by content.

Exclusion: AGSSP pretrained on pools that included their evaluation sources, so their gains partly measured
memorisation. Here the user names dataset roots whose evaluation images must never be in the pool; each is loaded
with the detection loader (engine.datasets.detection: the split training and `defectscope eval` use) and every
pool image that is one of its test images, by resolved path or by content (sha1 of the file's bytes: a copy under
another name is the same image), is dropped. The final pool is then checked again, from disk, and a remaining
test image is an error, never a warning.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.datasets.detection import load_detection_set
from engine.datasets.imageio import image_size, is_image_file, read_image
from engine.datasets.registry import detect_format
from engine.errors import DatasetError, DefectScopeError, ModelError
from engine.pseudo_boxes import CoarseMap

# A model's full-size map is kept at most this large on its long side until boxes are made (the exported models
# compute maps at 256 px and blur them, so nothing finer is lost); a 3000-image pool then fits in memory.
MODEL_MAP_SIDE = 256
PLAIN_FOLDER = "folder"  # the registry's name for a folder of images in no labelled layout


def file_sha1(path: str | Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ExcludedImages:
    """The evaluation (test-split) images of the excluded dataset roots, by resolved path and content hash."""

    paths: frozenset[Path]
    hashes: frozenset[str]
    sources: tuple[str, ...]  # the dataset roots, resolved

    def matches(self, path: Path, sha1: str) -> bool:
        return path in self.paths or sha1 in self.hashes


def excluded_test_images(roots: Sequence[str | Path]) -> ExcludedImages:
    """The test images of each dataset root, in the detection split (the one `defectscope eval` scores)."""
    paths: set[Path] = set()
    hashes: set[str] = set()
    sources = []
    for root in roots:
        try:
            data = load_detection_set(root)
        except DatasetError as exc:
            raise DatasetError(f"exclude {root}: cannot load it as a labelled dataset to find its test images "
                               f"({exc})") from None
        tests = data.select("test")
        if not tests:
            raise DatasetError(f"exclude {root}: the dataset has no test split to exclude")
        for sample in tests:
            resolved = Path(sample.image_path).resolve()
            paths.add(resolved)
            hashes.add(file_sha1(resolved))
        sources.append(str(Path(root).resolve()))
    return ExcludedImages(frozenset(paths), frozenset(hashes), tuple(sources))


def check_excluded(images: Sequence[str | Path], excluded: ExcludedImages) -> None:
    """Raise DefectScopeError when any of `images` is an excluded evaluation image (re-read from disk: this check
    trusts nothing the filtering computed)."""
    if not excluded.paths:
        return
    found = []
    for image in images:
        path = Path(image).resolve()
        if excluded.matches(path, file_sha1(path)):
            found.append(path)
    if found:
        raise DefectScopeError(
            f"{len(found)} pool images are evaluation (test) images of {', '.join(excluded.sources)} (first: "
            f"{found[0]}); they must never be pseudo-labelled or pretrained on")


@dataclass
class Pool:
    images: list[Path]  # resolved, in folder order then sorted path order
    groups: list[str]  # the group (folder) of each image
    keys: list[str]  # "<group>/<path inside the group's folder>": unique, for detections.json
    group_roots: dict[str, Path]
    excluded: ExcludedImages
    excluded_count: int = 0  # pool images dropped as evaluation images
    duplicates: int = 0  # images dropped as the same path or the same content as an earlier one
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    empty_folders: list[str] = field(default_factory=list)  # given folders that added no image
    warnings: list[str] = field(default_factory=list)  # e.g. a labelled dataset in the pool that is not excluded

    def group_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(self.group_roots, 0)
        for g in self.groups:
            sizes[g] += 1
        return sizes


def _image_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # hidden: staging folders, caches
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if is_image_file(path):
                found.append(path)
    return found


def _group_name(folder: Path, taken: dict[str, Path]) -> str:
    base = folder.name or "pool"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def assemble_pool(folders: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> Pool:
    """The pool from `folders` (one group each), without the test images of the `exclude` dataset roots."""
    if not folders:
        raise DatasetError("the pool needs at least one folder of images")
    excluded = excluded_test_images(exclude)
    pool = Pool([], [], [], {}, excluded)
    seen_paths: set[Path] = set()
    seen_hashes: set[str] = set()
    for given in folders:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"{folder}: pool folder does not exist" if not folder.exists()
                               else f"{folder}: a pool entry must be a folder of images")
        root = folder.resolve()
        group = _group_name(root, pool.group_roots)
        pool.group_roots[group] = root
        for path in _image_files(root):
            resolved = path.resolve()
            if resolved in seen_paths:
                pool.duplicates += 1
                continue
            seen_paths.add(resolved)
            try:
                image_size(resolved)  # header only: decoding happens once, when the image is scored
                digest = file_sha1(resolved)
            except (DefectScopeError, OSError) as exc:
                pool.unreadable[str(resolved)] = str(exc)
                continue
            if excluded.matches(resolved, digest):
                pool.excluded_count += 1
                continue
            if digest in seen_hashes:
                pool.duplicates += 1
                continue
            seen_hashes.add(digest)
            pool.images.append(resolved)
            pool.groups.append(group)
            pool.keys.append(f"{group}/{path.relative_to(root).as_posix()}")
    # A folder left without images (nested in an earlier one, or all excluded) is no group: noted, not scored.
    used = set(pool.groups)
    pool.empty_folders = [str(r) for g, r in pool.group_roots.items() if g not in used]
    pool.group_roots = {g: r for g, r in pool.group_roots.items() if g in used}
    if not pool.images:
        where = ", ".join(str(f) for f in folders)
        raise DatasetError(f"no usable images in the pool ({where})"
                           + (f": {pool.excluded_count} were evaluation images" if pool.excluded_count else ""))
    check_excluded(pool.images, excluded)
    pool.warnings = [f"{root}: a labelled dataset with a test split is in the pool but not excluded; if its test "
                     f"images will evaluate a detector, add it to exclude (--exclude {root})"
                     for root in labelled_sets_not_excluded(list(pool.group_roots.values()), excluded)]
    return pool


def labelled_sets_not_excluded(folders: Sequence[Path], excluded: ExcludedImages) -> list[str]:
    """Pool folders that are, or lie at most two levels inside, a labelled dataset with a test split that no
    exclude root covers: the evaluation images a user most likely forgot to keep out (NEU-DET's images/ without
    --exclude). Only folders in a labelled layout are loaded (a plain folder of images is not one)."""
    covered = [Path(s) for s in excluded.sources]
    found: list[str] = []
    for folder in folders:
        for candidate in (folder.parent.parent, folder.parent, folder):  # outermost first: the set's own root
            if str(candidate) in found or any(candidate.is_relative_to(c) or c.is_relative_to(candidate)
                                              for c in covered):
                continue
            try:
                if detect_format(candidate) == PLAIN_FOLDER:
                    continue
                if load_detection_set(candidate).select("test"):
                    found.append(str(candidate))
                    break
            except DatasetError:
                continue
    return found


def model_maps(model_dir: str | Path, images: Sequence[Path], device: str = "auto",
               progress: Callable[[float, str], None] | None = None
               ) -> tuple[list[CoarseMap | None], dict[int, str], dict]:
    """Each image's map from an exported anomaly model (engine.runtime: the one inference path), kept at most
    MODEL_MAP_SIDE on its long side; None and a reason for an image that cannot be read; and what the run records
    (provider, seconds)."""
    from engine.runtime.model_format import open_model, read_model_info

    info = read_model_info(model_dir)
    if info.task != "anomaly" or not info.scores_images or info.kind == "multimodal":
        raise ModelError(f"{model_dir}: a {info.kind} model cannot score a pool of images; give an anomaly model "
                         "folder (defectscope train anomaly) or 'mutual'")
    t0 = time.perf_counter()
    scorer = open_model(info, device)
    report = progress or (lambda _f, _m: None)
    maps: list[CoarseMap | None] = []
    errors: dict[int, str] = {}
    for i, path in enumerate(images):
        try:
            image = read_image(path)
        except DefectScopeError as exc:
            maps.append(None)
            errors[i] = str(exc)
            continue
        _, amap = scorer.score_image(image)
        amap = np.asarray(amap, np.float32).squeeze()
        h, w = image.shape[:2]
        if amap.shape != (h, w):
            amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        s = min(1.0, MODEL_MAP_SIDE / max(h, w))
        if s < 1.0:
            amap = cv2.resize(amap, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        maps.append(CoarseMap(amap, (h, w)))
        if (i + 1) % 20 == 0 or i + 1 == len(images):
            report((i + 1) / len(images), f"scored {i + 1}/{len(images)} images with {Path(model_dir).name}")
    return maps, errors, {"provider": scorer.provider, "model_kind": info.kind, "notes": list(scorer.notes),
                          "scoring_s": round(time.perf_counter() - t0, 2)}
