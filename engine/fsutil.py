"""Atomic file writes and atomic folder swaps: readers see the old content or the new, never half of it.

Every writer of a file or folder that another process (the GUI, a second engine job) may read at the same time
goes through here, so the temp naming, the fsync and the "is this folder ours to replace?" guard exist once.

Folder swaps build the new content in a hidden sibling (`staging_dir`) and rename it into place. Replacing an
existing folder is only allowed when it carries our marker file (the manifest an earlier run wrote last) or is
empty: a destination named by the user may be their own data, and deleting it would be unforgivable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from engine.errors import FolderNotOwnedError

# Staging folders of a killed run are swept after this long (a younger one may belong to a live run).
STALE_STAGING_S = 3600.0


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync and rename.

    The file keeps the mode of the file it replaces (0644 for a new one): mkstemp creates owner-only files,
    and models and exports are shared with other users of the machine.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """`atomic_write_bytes` of `text`, encoded as given; newlines are written as they are (no translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def staging_dir(dest: str | Path) -> Path:
    """A new, empty hidden sibling of `dest` to build its next content in (same filesystem: rename is atomic)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    folder = dest.parent / f"{_staging_prefix(dest)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def sweep_stale_staging(dest: str | Path, older_than_s: float = STALE_STAGING_S) -> None:
    """Delete staging folders of `dest` that a killed run left behind (only old ones: a young one may be live)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    now = time.time()
    for p in dest.parent.glob(_staging_prefix(dest) + "*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def check_replaceable(dest: str | Path, marker: str | None) -> None:
    """Raise FolderNotOwnedError unless `dest` is absent, empty, or a folder holding the file `marker`.

    marker None: the caller has already decided that dest may go (e.g. an export with overwrite=True after its
    own checks, or a folder inside DefectScope's data home); only a non-folder is still refused.
    """
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not dest.is_dir():
        raise FolderNotOwnedError(f"{dest}: exists and is not a folder; refusing to replace it")
    if marker is None or (dest / marker).is_file():
        return
    if any(dest.iterdir()):
        raise FolderNotOwnedError(
            f"{dest}: folder is not empty and has no {marker} (not written by DefectScope); refusing to replace it"
        )


def atomic_swap_dir(staging: str | Path, dest: str | Path, marker: str | None) -> None:
    """Move the finished `staging` folder to `dest`, replacing what is there only if `check_replaceable` allows.

    The previous content is renamed aside first and deleted only once the new folder is in place; if the final
    rename fails, it is put back. On any error `staging` is left for the caller to delete.
    """
    staging, dest = Path(staging), Path(dest)
    check_replaceable(dest, marker)
    old: Path | None = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    try:
        os.replace(staging, dest)
    except OSError:
        if old is not None and not dest.exists():
            os.replace(old, dest)  # put the previous content back rather than lose both
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _staging_prefix(dest: Path) -> str:
    return f".{dest.name}.partial-"
