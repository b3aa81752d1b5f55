"""The one atomic file write and the one atomic folder swap (with its ownership guard)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.errors import DatasetError, FolderNotOwnedError
from engine.fsutil import (
    atomic_swap_dir,
    atomic_write_bytes,
    atomic_write_text,
    check_replaceable,
    staging_dir,
    sweep_stale_staging,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    atomic_write_text(path, "first\n")
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp's 0600 would hide models from other users
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the replaced file's mode is kept
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "scores.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_swap_replaces_only_folders_carrying_the_marker(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    stage = staging_dir(dest)
    (stage / "MARK").write_text("1")
    atomic_swap_dir(stage, dest, "MARK")  # absent: created
    assert (dest / "MARK").read_text() == "1" and not stage.exists()

    stage = staging_dir(dest)
    (stage / "MARK").write_text("2")
    atomic_swap_dir(stage, dest, "MARK")  # ours: replaced
    assert (dest / "MARK").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    stage = staging_dir(mine)
    with pytest.raises(FolderNotOwnedError, match=r"mine.*no MARK"):
        atomic_swap_dir(stage, mine, "MARK")
    assert (mine / "precious.txt").read_text() == "keep me" and stage.is_dir()
    assert issubclass(FolderNotOwnedError, DatasetError)

    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderNotOwnedError, match="not a folder"):
        check_replaceable(tmp_path / "file", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty, "MARK")  # an empty folder holds nothing to lose
    check_replaceable(mine, None)  # the caller vouches for it (export --overwrite)


def test_sweep_removes_only_old_staging(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    old, young = staging_dir(dest), staging_dir(dest)
    long_ago = os.path.getmtime(old) - 7200
    os.utime(old, (long_ago, long_ago))
    sweep_stale_staging(dest)
    assert not old.exists() and young.is_dir()
