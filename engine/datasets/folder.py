"""Plain folders, the fallback layout: the folder name is the label.

- `ROOT/good/*` (also `ok/`, `normal/`) are GOOD; `ROOT/<any other folder>/*` are DEFECTIVE with
  defect_type = the folder name; split "unspecified".
- `ROOT/{train,val,test}/<good|defect>/*` give the same labels with that split.
- Images directly in ROOT (or directly in a split folder) carry no label: UNKNOWN.
- Optional masks: `ROOT/masks/<stem>.png` or `ROOT/ground_truth/<defect>/<stem>_mask.png` (or `<stem>.png`).
  When a mask folder exists, a defective image without a mask is a LoadIssue.

It is registered last because almost any folder of images matches it.
"""

from __future__ import annotations

from pathlib import Path

from engine.datasets.common import (
    add_capped,
    checked_mask,
    finish,
    images_by_stem,
    is_split_name,
    list_images,
    list_subdirs,
    no_categories,
    probe_size,
    split_name,
    unlabelled_sample,
)
from engine.datasets.registry import register_format
from engine.datasets.types import DEFECTIVE, GOOD, Dataset, Sample

GOOD_NAMES = frozenset({"good", "ok", "normal"})
MASK_DIRS = frozenset({"masks", "ground_truth"})


def _label_folders(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(folders of unlabelled images with their split, (class folder, split) pairs)."""
    unlabelled: list[Path] = [root]
    classes: list[tuple[Path, str]] = []
    for d in list_subdirs(root):
        if d.name.lower() in MASK_DIRS:
            continue
        if is_split_name(d.name) and list_subdirs(d):
            unlabelled.append(d)
            classes.extend((c, split_name(d.name)) for c in list_subdirs(d))
        else:
            classes.append((d, "unspecified"))
    return unlabelled, classes


@register_format("folder", "Plain folders: good/ and one folder per defect type, or a flat folder of images")
class FolderReader:
    """Images sorted into good/ and defect folders (optionally under train/ and test/)."""

    name = "folder"

    def detect(self, root: Path) -> bool:
        if not root.is_dir():
            return False
        unlabelled, classes = _label_folders(root)
        return any(list_images(d) for d in unlabelled) or any(list_images(c) for c, _ in classes)

    def load(self, root: Path, category: str | None = None) -> Dataset:
        no_categories(root, "folder", category)
        ds = Dataset(root=root, format=self.name)
        unlabelled, classes = _label_folders(root)
        for d in unlabelled:
            split = "unspecified" if d == root else split_name(d.name)
            for img in list_images(d):
                if probe_size(img, ds.issues) is not None:
                    ds.samples.append(unlabelled_sample(img, split))
        flat_masks = images_by_stem(root / "masks")
        gt_root = root / "ground_truth"
        has_masks = (root / "masks").is_dir() or gt_root.is_dir()
        gt_cache: dict[str, dict[str, Path]] = {}
        for folder, split in classes:
            good = folder.name.lower() in GOOD_NAMES
            if not good and folder.name not in gt_cache:
                gt_cache[folder.name] = images_by_stem(gt_root / folder.name)
            missing: list[Path] = []
            for img in list_images(folder):
                size = probe_size(img, ds.issues)
                if size is None:
                    continue
                sample = Sample(
                    img, split=split, label=GOOD if good else DEFECTIVE,
                    defect_type="good" if good else folder.name,
                )
                if has_masks and not good:
                    mask = _find_mask(img.stem, gt_cache[folder.name], flat_masks)
                    if mask is None:
                        missing.append(img)
                    sample.mask_path = checked_mask(img, size, mask, ds.issues)
                ds.samples.append(sample)
            add_capped(ds.issues, missing, "no mask found in masks/ or ground_truth/", folder)
        return finish(ds)


def _find_mask(stem: str, per_defect: dict[str, Path], flat: dict[str, Path]) -> Path | None:
    for table in (per_defect, flat):
        for key in (f"{stem}_mask", stem):
            if key in table:
                return table[key]
    return None

