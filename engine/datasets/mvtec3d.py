"""MVTec 3D-AD layout: `<cls>/{train,validation,test}/<good|defect>/{rgb,xyz,gt}/`.

Sample.image_path is the rgb PNG, `extra["xyz_path"]` the matching xyz TIFF (None when missing, with a
LoadIssue); a `depth/` folder of single-channel depth maps (PNG or TIFF) may stand in for `xyz/`, given as
`extra["depth_path"]` and mask_path the gt PNG. The TIFF is only checked to exist: decoding point clouds at load time
would make opening a dataset slow, and the 3D reader needs them only when it runs. MVTec 3D-AD ships
(all-zero) gt masks for good test images too; they are kept since they are the dataset's own truth.
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


def is_mvtec3d_category(folder: Path) -> bool:
    if (folder / "train" / "good" / "rgb").is_dir():
        return True
    return any((d / "rgb").is_dir() for d in list_subdirs(folder / "test"))


@register_format("mvtec3d", "MVTec 3D-AD folders: <cls>/<split>/<good|defect>/{rgb,xyz,gt}")
class MVTec3DReader(CategoryFolderReader):
    """MVTec 3D-AD layout (RGB + xyz point-cloud TIFF + ground truth per sample)."""

    name = "mvtec3d"
    layout = "MVTec 3D-AD"

    def is_category(self, folder: Path) -> bool:
        return is_mvtec3d_category(folder)

    def load_category(self, folder: Path, samples: list[Sample], issues: list[LoadIssue]) -> None:
        _load_category(folder, samples, issues)


def _load_category(cat: Path, samples: list[Sample], issues: list[LoadIssue]) -> None:
    for split_dir in SPLIT_DIRS:
        for cls_dir in list_subdirs(cat / split_dir):
            rgb_dir = cls_dir / "rgb"
            if not rgb_dir.is_dir():
                issues.append(LoadIssue(cls_dir, "no rgb/ folder; skipped"))
                continue
            good = cls_dir.name == "good"
            xyzs = images_by_stem(cls_dir / "xyz")
            depths = images_by_stem(cls_dir / "depth")  # the depth-map variant: depth/<stem>.png|tiff
            gts = images_by_stem(cls_dir / "gt")
            no_xyz: list[Path] = []
            no_gt: list[Path] = []
            for img in list_images(rgb_dir):
                size = probe_size(img, issues)
                if size is None:
                    continue
                xyz = xyzs.get(img.stem)
                if xyz is not None and xyz.suffix.lower() not in (".tif", ".tiff"):
                    xyz = None
                depth = depths.get(img.stem) if xyz is None else None
                if xyz is None and depth is None:
                    no_xyz.append(img)
                gt = gts.get(img.stem)
                if gt is None and not good:
                    no_gt.append(img)
                samples.append(
                    Sample(
                        img,
                        split=split_name(split_dir),
                        label=GOOD if good else DEFECTIVE,
                        defect_type=cls_dir.name,
                        mask_path=checked_mask(img, size, gt, issues),
                        category=cat.name,
                        extra={"xyz_path": xyz} if depth is None else {"xyz_path": None, "depth_path": depth},
                    )
                )
            add_capped(issues, no_xyz, f"no matching xyz/<stem>.tiff (or depth/<stem>) in {cls_dir.name}/",
                       cls_dir / "xyz")
            add_capped(issues, no_gt, f"no matching gt/<stem>.png in {cls_dir.name}/gt/", cls_dir / "gt")
