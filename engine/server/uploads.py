"""Dataset uploads to a remote engine: the limits and the path checks every upload goes through, and zip archives,
checked member by member before anything is extracted.

The content-addressed uploads (engine.server.upload_store) check each manifest path with `check_upload_path`,
the same rule zip members are held to. Refused (with the member named): absolute paths or `..` (zip slip), symbolic links, a member or a total larger
than the limits (zip bombs), too many members. Extraction goes to a temporary folder renamed into place, so a
refused or broken archive leaves nothing behind.
"""

from __future__ import annotations

import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import DefectScopeError


@dataclass(frozen=True)
class UploadLimits:
    max_archive_bytes: int = 4 << 30
    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 16 << 30
    max_members: int = 200_000
    max_path_chars: int = 1024


# Names no file system of the engine or the client should have to hold (Windows device names included).
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


class UploadError(DefectScopeError):
    pass


def check_upload_path(name: object, what: str = "file", limits: UploadLimits | None = None) -> str:
    """`name` as a normalised relative POSIX path that stays inside the upload folder; UploadError naming it else.

    Refused: empty names, absolute paths and drive letters, backslashes, "." and ".." parts, empty parts ("a//b"),
    control characters, reserved device names, over-long paths.
    """
    limits = limits or UploadLimits()
    if not isinstance(name, str) or not name:
        raise UploadError(f"{what} {name!r}: empty or not a path")
    shown = repr(name) if any(ord(c) < 32 for c in name) else f"'{name}'"
    parts = name.split("/")
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or "\\" in name or ".." in parts:
        raise UploadError(f"{what} {shown}: path leaves the upload folder")
    if any(p in ("", ".") for p in parts):
        raise UploadError(f"{what} {shown}: empty or '.' path component")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UploadError(f"{what} {shown}: control characters in the path")
    if len(name) > limits.max_path_chars:
        raise UploadError(f"{what} '{name[:60]}...': path longer than {limits.max_path_chars} characters")
    for part in parts:
        if part.split(".")[0].upper() in _RESERVED or part.endswith((" ", ".")):
            raise UploadError(f"{what} {shown}: '{part}' is not a portable file name")
    return name


def check_members(archive: zipfile.ZipFile, limits: UploadLimits) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise UploadError(f"archive has {len(infos)} members (limit {limits.max_members})")
    total = 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
            raise UploadError(f"member '{name}': path leaves the upload folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"member '{name}': symbolic links are not accepted")
        if info.file_size > limits.max_member_bytes:
            raise UploadError(f"member '{name}': {info.file_size} bytes (limit {limits.max_member_bytes})")
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UploadError(f"archive unpacks to more than {limits.max_total_bytes} bytes")
    return infos


def extract_upload(archive_path: Path, uploads_dir: Path, limits: UploadLimits) -> tuple[str, Path]:
    """(upload id, folder) for a checked archive; raises UploadError naming the offending member."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"not a zip archive ({exc})") from None
    upload_id = uuid.uuid4().hex[:12]
    tmp = uploads_dir / f".{upload_id}.partial"
    final = uploads_dir / upload_id
    with archive:
        infos = check_members(archive, limits)
        tmp.mkdir(parents=True)
        try:
            root = tmp.resolve()
            for info in infos:
                target = (tmp / info.filename).resolve()
                if not target.is_relative_to(root):  # belt and braces after check_members
                    raise UploadError(f"member '{info.filename}': path leaves the upload folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(info) as src, target.open("wb") as dst:
                    # Declared sizes can lie: count what is really inflated.
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        written += len(block)
                        if written > limits.max_member_bytes:
                            raise UploadError(f"member '{info.filename}': inflates beyond its limit")
                        dst.write(block)
            tmp.rename(final)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UploadError(f"corrupt archive ({exc})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return upload_id, final
