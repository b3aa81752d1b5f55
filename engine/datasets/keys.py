"""One stable key per image: its path relative to the dataset root, shared by the GUI, reviews and predictions."""

from __future__ import annotations

from pathlib import Path

from engine.datasets.types import Sample


def sample_key(root: str | Path, sample: Sample | str | Path) -> str:
    """The image's path relative to the dataset root, with forward slashes (absolute when outside the root).

    Relative keys keep decisions valid when a dataset folder is moved or opened from another drive.
    """
    path = Path(sample.image_path if isinstance(sample, Sample) else sample)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()
