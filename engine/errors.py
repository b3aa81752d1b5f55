"""User-facing errors: each one names the file or field at fault and maps to CLI exit code 2."""

from __future__ import annotations

from pathlib import Path


class DefectScopeError(Exception):
    """An error caused by the user's input, shown as one clear line (never a traceback)."""

    exit_code = 2


class DatasetError(DefectScopeError):
    """A dataset cannot be used as asked (missing folder, empty split, unknown category...)."""


class ImageReadError(DefectScopeError):
    """One image or mask file cannot be read."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(DefectScopeError):
    """A model directory is missing, incomplete or incompatible."""


class FolderNotOwnedError(DatasetError):
    """A folder that would be replaced holds something DefectScope did not write there (a user's own data)."""


class ArtifactRefError(DefectScopeError):
    """A job parameter names "job:<id>/<artifact>" that this engine cannot resolve (unknown, unfinished, missing)."""


class UploadCancelled(DefectScopeError):
    """An upload to an engine stopped at a chunk boundary because its cancel event was set; the next upload of
    the same folder resumes where this one stopped."""
