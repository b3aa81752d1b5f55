"""Curation of a synthetic set: the samples a person rejected (the workbench's gallery) are removed for good.

Synthesis makes some unusable samples (a defect pasted over the part's edge, a generated blob that is not the type it
claims); training must never see them, so rejecting deletes their image and mask files and rewrites the manifest
(per_type recounted, a running "rejected" count kept). Only files the manifest names for the rejected samples are
touched, and only inside the set's folder: a manifest naming anything else (edited by hand, or hostile) is refused
before anything is deleted. Torch-free, so it runs on any engine (job `curate_synthetic_set`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import DatasetError
from engine.synthesis.synthetic_set import (
    MANIFEST_FILE,
    is_synthetic_set,
    manifest_samples,
    read_manifest,
    write_manifest,
)


def reject_samples(folder: str | Path, images: Sequence[str]) -> dict[str, Any]:
    """Remove the samples named by their image path relative to the set (as the manifest lists them, e.g.
    "train/crack/0003.png"): their image and mask files, and their manifest rows.

    Returns {"folder", "rejected" (this call), "kept", "per_type" (after), "rejected_total" (every curation so far)}.
    DatasetError names the folder, the manifest field or the unknown name; nothing is deleted then.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: synthetic set folder not found")
    if not is_synthetic_set(root):
        raise DatasetError(f"{root}: not a synthetic set (no {MANIFEST_FILE}); only synthetic samples can be "
                           "rejected, a real dataset is never changed")
    manifest_path = root / MANIFEST_FILE
    manifest = read_manifest(root)
    rows = manifest_samples(manifest, manifest_path)
    by_image = {row["image"]: row for row in rows}
    wanted = list(dict.fromkeys(images))  # a name given twice is removed once
    unknown = [name for name in wanted if name not in by_image]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise DatasetError(f"{manifest_path}: no sample {unknown[0]!r} in this synthetic set{more}; name samples by "
                           "their \"image\" as the manifest lists them")
    previous = manifest.get("rejected", 0)
    if not isinstance(previous, int) or isinstance(previous, bool) or previous < 0:
        raise DatasetError(f"{manifest_path}: \"rejected\" must be a count (a whole number >= 0), not {previous!r}")

    # Every path is checked before the first deletion, so a refusal never leaves the set half curated.
    index = {row["image"]: i for i, row in enumerate(rows)}
    doomed = [_inside(root, manifest_path, index[name], field, by_image[name][field])
              for name in wanted for field in ("image", "mask")]
    # Files first, manifest last: if this is interrupted in between, the rejected images are already out of the
    # folder (training reads the folder, so they can no longer train) and running it again finishes the manifest.
    for path in doomed:
        path.unlink(missing_ok=True)
    gone = set(wanted)
    kept = [row for row in rows if row["image"] not in gone]
    old_counts = manifest.get("per_type")
    # A type rejected entirely stays listed at 0: the manifest still says it was synthesised.
    per_type = {str(t): 0 for t in old_counts} if isinstance(old_counts, dict) else {}
    for row in kept:
        per_type[row["type"]] = per_type.get(row["type"], 0) + 1
    total = previous + len(wanted)
    write_manifest(root, {**manifest, "per_type": per_type, "samples": kept, "rejected": total})
    return {"folder": str(root), "rejected": len(wanted), "kept": len(kept), "per_type": per_type,
            "rejected_total": total}


def _inside(root: Path, manifest_path: Path, i: int, field: str, rel: str) -> Path:
    """The file a manifest row names, refused unless it is a file (or already gone) inside the set's folder."""
    path = root / rel
    resolved = path.resolve()  # follows links: a link pointing out of the set is refused too
    base = root.resolve()
    if (Path(rel).is_absolute() or not resolved.is_relative_to(base) or resolved == base
            or resolved == manifest_path.resolve() or path.is_dir()):
        raise DatasetError(f"{manifest_path}: samples[{i}].{field} {rel!r} is not a file inside the synthetic set; "
                           "nothing was removed")
    return path
