"""The embedded demo dataset: a small MVTec-AD-layout inspection set that DefectScope generates itself.

Shipping real images would bloat the installer and tie us to third-party licences, so on first use the app
renders a procedural dataset instead: a few textured surfaces and a few objects, every good image a little
different (noise, lighting, pose) so that it is a genuine anomaly-detection problem, and defect images whose
pixel masks are computed from the very footprint the defect was painted with.

Layout (exactly what the MVTec reader expects)::

    ROOT/<category>/train/good/NNN.png
    ROOT/<category>/test/good/NNN.png
    ROOT/<category>/test/<defect>/NNN.png
    ROOT/<category>/ground_truth/<defect>/NNN_mask.png   (uint8 0/255, one channel, image size)
    ROOT/README.txt   what this is and how it was made
    ROOT/demo.json    generator version, seed, categories, counts: decides whether a copy is current

This module writes the set (manifest, README, the atomic swap into place with the "is this an earlier demo?"
guard of engine.fsutil); the pixels come from demo_render.render_sample, which composes the part renderers of
demo_surfaces, the defect painters of demo_defects and the primitives of demo_parts. Every image is rendered
from its own random stream, keyed by (seed, category, split, defect, index), so the output is byte-identical on
rerun and independent of the counts asked for or the order of rendering.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.datasets.demo_parts import CATEGORIES
from engine.datasets.demo_render import render_sample
from engine.errors import DatasetError
from engine.fsutil import atomic_swap_dir, check_replaceable, staging_dir, sweep_stale_staging
from engine.home import default_data_home

# Bump whenever the rendered pixels, the layout or the manifest change: existing copies are then regenerated.
DEMO_VERSION: int = 2

MANIFEST_NAME = "demo.json"
README_NAME = "README.txt"
GENERATOR_NAME = "defectscope.demo"

# What ensure_demo_dataset() builds; a module-level dict so tests can shrink it.
DEFAULT_CONFIG: dict[str, Any] = {
    "n_train": 40,
    "n_test_good": 10,
    "n_test_defect_per_type": 6,
    "image_size": 256,
    "seed": 0,
}


def _manifest(
    categories: Sequence[str], n_train: int, n_test_good: int, n_defect: int, size: int, seed: int
) -> dict:
    return {
        "generator": GENERATOR_NAME,
        "version": DEMO_VERSION,
        "seed": seed,
        "image_size": size,
        "categories": {
            name: {
                "kind": CATEGORIES[name].kind,
                "channels": CATEGORIES[name].channels,
                "train_good": n_train,
                "test_good": n_test_good,
                "test_defects": {d: n_defect for d in CATEGORIES[name].defects},
            }
            for name in categories
        },
    }


def _readme(manifest: dict) -> str:
    lines = [
        "DefectScope demo dataset (synthetic)",
        "=" * 36,
        "",
        "Every image in this folder is synthetic: DefectScope rendered it procedurally (numpy/OpenCV noise,",
        "shading and drawing) the first time the demo was needed. No photograph of a real part is included.",
        "It exists so that the app can be tried with no download; results on it say nothing about real",
        "inspection performance.",
        "",
        f"Generator: {manifest['generator']} version {manifest['version']}, seed {manifest['seed']}, "
        f"{manifest['image_size']}x{manifest['image_size']} px. Same version and seed give byte-identical files.",
        "",
        "Layout (MVTec AD):",
        "  <category>/train/good/NNN.png               defect-free training images",
        "  <category>/test/good/NNN.png                defect-free test images",
        "  <category>/test/<defect>/NNN.png            defective test images",
        "  <category>/ground_truth/<defect>/NNN_mask.png  pixel masks (0 = good, 255 = defect), computed from",
        "                                              the exact footprint each defect was painted with",
        "  demo.json                                   generator version, seed, categories and counts",
        "",
        "Good parts vary like real ones (sensor noise, lighting, slight pose), so this is a genuine anomaly-",
        "detection task rather than a search for differences from one template.",
        "",
        "Categories:",
    ]
    for name, info in manifest["categories"].items():
        spec = CATEGORIES[name]
        colour = "grayscale" if spec.channels == 1 else "RGB"
        lines.append(
            f"  {name} ({spec.kind}, {colour}; {info['train_good']} train, {info['test_good']} good test)"
        )
        lines.append(f"    {spec.description}")
        for d, n in info["test_defects"].items():
            lines.append(f"    - {d} ({n}): {spec.defect_notes.get(d, '')}")
    lines.append("")
    return "\n".join(lines)


def _write_png(path: Path, img: np.ndarray) -> None:
    data = img[..., ::-1] if img.ndim == 3 else img  # cv2 encodes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _jobs(manifest: dict) -> list[tuple[str, str, str | None, int]]:
    jobs: list[tuple[str, str, str | None, int]] = []
    for name, info in manifest["categories"].items():
        jobs += [(name, "train", None, i) for i in range(info["train_good"])]
        jobs += [(name, "test", None, i) for i in range(info["test_good"])]
        for d, n in info["test_defects"].items():
            jobs += [(name, "test", d, i) for i in range(n)]
    return jobs


def _write_all(tmp: Path, manifest: dict) -> None:
    size, seed = manifest["image_size"], manifest["seed"]
    for name, info in manifest["categories"].items():
        (tmp / name / "train" / "good").mkdir(parents=True)
        (tmp / name / "test" / "good").mkdir(parents=True)
        for d in info["test_defects"]:
            (tmp / name / "test" / d).mkdir(parents=True)
            (tmp / name / "ground_truth" / d).mkdir(parents=True)

    def one(job: tuple[str, str, str | None, int]) -> None:
        name, split, defect, i = job
        sample = render_sample(name, split=split, defect=defect, index=i, image_size=size, seed=seed)
        _write_png(tmp / name / split / (defect or "good") / f"{i:03d}.png", sample.image)
        if defect is not None:
            _write_png(tmp / name / "ground_truth" / defect / f"{i:03d}_mask.png", sample.mask)

    # numpy and OpenCV release the GIL in the heavy calls, so two threads use both cores; every image has
    # its own random stream, so the output does not depend on scheduling.
    workers = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for _ in pool.map(one, _jobs(manifest)):
            pass
    finally:
        # On failure or Ctrl+C, drop the queued images instead of rendering them all before unwinding.
        pool.shutdown(wait=True, cancel_futures=True)
    (tmp / README_NAME).write_text(_readme(manifest), encoding="utf-8", newline="\n")
    # Written last: a folder without demo.json is never taken for a finished demo.
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="\n")


def _read_manifest(root: Path) -> dict | None:
    try:
        data = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(root: Path, manifest: dict) -> bool:
    found = _read_manifest(root)
    if found != manifest:
        return False
    return all((root / name / "train" / "good").is_dir() for name in manifest["categories"])


def generate_demo_dataset(
    root: Path,
    *,
    categories: Sequence[str] | None = None,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect_per_type: int = 6,
    image_size: int = 256,
    seed: int = 0,
) -> Path:
    """Render the demo dataset into `root` (replacing an earlier demo there) and return `root`.

    Deterministic for a seed. Atomic: everything is written into a hidden sibling folder that is renamed into
    place only when complete, so an interrupted run never leaves something that looks like a dataset.
    """
    return _generate(
        Path(root), categories, n_train, n_test_good, n_test_defect_per_type, image_size, seed, owned=False
    )


def _generate(
    root: Path,
    categories: Sequence[str] | None,
    n_train: int,
    n_test_good: int,
    n_defect: int,
    image_size: int,
    seed: int,
    *,
    owned: bool,
) -> Path:
    names = list(CATEGORIES) if categories is None else list(dict.fromkeys(categories))
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise DatasetError(f"unknown demo categories {unknown}; known: {', '.join(CATEGORIES)}")
    if not names:
        raise DatasetError("no demo categories selected")
    if min(n_train, n_test_good, n_defect) < 0:
        raise DatasetError("demo image counts must not be negative")
    if n_train < 1:
        raise DatasetError("the demo needs at least one training image per category")
    if not 64 <= image_size <= 2048:
        raise DatasetError(f"demo image_size must be within 64..2048, got {image_size}")
    if seed < 0:
        raise DatasetError(f"demo seed must be non-negative, got {seed}")
    root = root.expanduser().absolute()
    # Checked before rendering (minutes for the full set) and again at the swap: root may be a user's own data.
    marker = None if owned else MANIFEST_NAME
    check_replaceable(root, marker)
    manifest = _manifest(names, n_train, n_test_good, n_defect, image_size, int(seed))

    tmp = staging_dir(root)
    try:
        _write_all(tmp, manifest)
        try:
            atomic_swap_dir(tmp, root, marker)
        except OSError:
            # Another process may have put a finished demo there meanwhile; that one is as good as ours.
            if not _is_current(root, manifest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_demo_dataset(root: Path | None = None) -> Path:
    """The demo dataset at `root` (default: <data home>/demo), generated only if missing or out of date."""
    owned = root is None
    target = (default_data_home() / "demo") if root is None else Path(root)
    target = target.expanduser().absolute()
    cfg = DEFAULT_CONFIG
    manifest = _manifest(
        list(CATEGORIES),
        cfg["n_train"],
        cfg["n_test_good"],
        cfg["n_test_defect_per_type"],
        cfg["image_size"],
        cfg["seed"],
    )
    if _is_current(target, manifest):
        return target
    sweep_stale_staging(target)
    return _generate(
        target,
        None,
        cfg["n_train"],
        cfg["n_test_good"],
        cfg["n_test_defect_per_type"],
        cfg["image_size"],
        cfg["seed"],
        owned=owned,
    )
