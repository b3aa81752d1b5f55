"""The one sample record every dataset reader produces, and the result of a load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GOOD = "good"
DEFECTIVE = "defective"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates of the original image (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    class_name: str = "defect"


@dataclass(frozen=True)
class Polygon:
    """Closed polygon in pixel coordinates of the original image."""

    points: tuple[tuple[float, float], ...]
    class_name: str = "defect"


@dataclass
class Sample:
    """One image of a dataset with whatever labels its format carries.

    split: "train", "validation", "test" or "unspecified".
    label: GOOD, DEFECTIVE or UNKNOWN (image-level).
    defect_type: the defect folder/class for defective images, "good" for good ones, None when unknown.
    mask_path: a binary pixel mask (any non-zero value is defect) or None.
    extra: format-specific paths, e.g. {"xyz_path": ...} for MVTec 3D-AD.
    """

    image_path: Path
    split: str = "unspecified"
    label: str = UNKNOWN
    defect_type: str | None = None
    mask_path: Path | None = None
    boxes: list[Box] = field(default_factory=list)
    polygons: list[Polygon] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_good(self) -> bool:
        return self.label == GOOD


@dataclass(frozen=True)
class LoadIssue:
    """A per-file problem found while loading; the rest of the dataset still loads."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Dataset:
    """The result of loading a dataset: samples, per-file issues, and what was read."""

    root: Path
    format: str
    samples: list[Sample] = field(default_factory=list)
    issues: list[LoadIssue] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    def select(self, split: str | None = None, label: str | None = None) -> list[Sample]:
        return [
            s
            for s in self.samples
            if (split is None or s.split == split) and (label is None or s.label == label)
        ]
