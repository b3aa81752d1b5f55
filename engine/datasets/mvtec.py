"""MVTec AD layout: `<category>/{train,test}/<good|defect>/` with pixel masks in `ground_truth/<defect>/`.

ROOT is either the dataset root holding several categories or one category folder (it has train/ and
test/). Masks are found as `<stem>_mask.<ext>` or `<stem>.<ext>` (MVTec itself uses NNN_mask.png). A
missing ground_truth/ folder means the set has no masks at all, which is fine; a ground_truth/ folder that
lacks the mask of one defective image is a LoadIssue, since the mask was expected.
A `validation/` split (MVTec LOCO) is read like train/ and test/.
"""

from __future__ import annotations

from pathlib import Path

from engine.datasets.common import (
    CategoryFolderReader,
    add_capped,
    checked_mask,
    images_by_stem,
    list_images,
    list_subdirs,
    probe_size,
    split_name,
)
from engine.datasets.registry import register_format
from engine.datasets.types import DEFECTIVE, GOOD, LoadIssue, Sample

SPLIT_DIRS = ("train", "validation", "test")


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir() and (folder / "test").is_dir()


@register_format("mvtec", "MVTec AD folders: <category>/train/good, test/<defect>, ground_truth/<defect>")
class MVTecReader(CategoryFolderReader):
    """MVTec AD anomaly-detection layout (one or several categories)."""

    name = "mvtec"
    layout = "MVTec AD"

    def is_category(self, folder: Path) -> bool:
        return is_mvtec_category(folder)

    def load_category(self, folder: Path, samples: list[Sample], issues: list[LoadIssue]) -> None:
        _load_category(folder, samples, issues)


def _load_category(cat: Path, samples: list[Sample], issues: list[LoadIssue]) -> None:
    gt_root = cat / "ground_truth"
    has_gt = gt_root.is_dir()
    for split_dir in SPLIT_DIRS:
        for cls_dir in list_subdirs(cat / split_dir):
            good = cls_dir.name == "good"
            masks = images_by_stem(gt_root / cls_dir.name) if has_gt and not good else {}
            missing: list[Path] = []
            for img in list_images(cls_dir):
                size = probe_size(img, issues)
                if size is None:
                    continue
                sample = Sample(
                    img,
                    split=split_name(split_dir),
                    label=GOOD if good else DEFECTIVE,
                    defect_type=cls_dir.name,
                    category=cat.name,
                )
                if has_gt and not good:
                    mask = masks.get(f"{img.stem}_mask") or masks.get(img.stem)
                    if mask is None:
                        missing.append(img)
                    else:
                        sample.mask_path = checked_mask(img, size, mask, issues)
                samples.append(sample)
            add_capped(
                issues, missing,
                f"no mask in ground_truth/{cls_dir.name}/ (looked for <stem>_mask.png and <stem>.png)",
                gt_root / cls_dir.name,
            )
