"""What a client is about to upload: every file of a folder with its relative POSIX path, size and SHA-256.

The engine stores files by content (engine.server.upload_store), so the manifest is what lets a second upload of
a folder send only the new or changed files. Hashing 1,350 images again for every upload would cost more than
sending the few that changed, so hashes are cached per file by (absolute path, size, mtime_ns): a file whose size
and modification time are unchanged is not read again.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.checksums import sha256_file
from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text
from engine.home import default_data_home

HASH_CACHE_NAME = "upload-hashes.json"
# Entries kept in the hash cache: the most recently hashed ones; an old entry costs one re-read at worst.
MAX_CACHED_HASHES = 500_000


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative to the uploaded folder, POSIX separators
    size: int
    sha256: str
    local: Path  # where it is on this machine (never sent)

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass
class Manifest:
    root: Path
    files: list[ManifestFile] = field(default_factory=list)
    hashed_files: int = 0  # files actually read to hash them (the others came from the cache)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> list[dict]:
        return [f.to_json() for f in self.files]

    def by_hash(self) -> dict[str, ManifestFile]:
        """One local file per distinct content (duplicates are sent once)."""
        out: dict[str, ManifestFile] = {}
        for f in self.files:
            out.setdefault(f.sha256, f)
        return out


class HashCache:
    """(absolute path, size, mtime_ns) -> sha256, kept in a JSON file beside the user's other DefectScope data."""

    _lock = threading.Lock()

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else default_data_home() / HASH_CACHE_NAME
        self._entries: dict[str, list] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self._entries = data
        except (OSError, ValueError):
            pass  # no cache yet, or a broken one: hash again

    def sha256(self, path: Path, st: os.stat_result) -> tuple[str, bool]:
        """(hash, whether the file was read)."""
        key = str(path)
        hit = self._entries.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return str(hit[2]), False
        digest = sha256_file(path)
        self._entries.pop(key, None)  # re-inserted last: dict order is the eviction order
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty = True
        return digest, True

    def save(self) -> None:
        if not self._dirty:
            return
        entries = self._entries
        if len(entries) > MAX_CACHED_HASHES:
            entries = dict(list(entries.items())[-MAX_CACHED_HASHES:])
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, json.dumps(entries))
            except OSError:
                pass  # a cache that cannot be written only costs time next upload
        self._dirty = False


def build_manifest(folder: str | Path, cache: HashCache | None = None) -> Manifest:
    """Every regular file under `folder` (or the one file `folder` names), sorted by path; paths start with the
    folder's (or file's) own name, which the upload's ref then names (`upload:<id>/<name>`).

    Symbolic links to files are sent as the file they point to (the content is the user's data); links to
    folders are not followed (no cycles, nothing outside the folder sent by accident).
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise DefectScopeError(f"{root}: no such file or folder to upload")
    cache = cache if cache is not None else HashCache()
    manifest = Manifest(root=root)
    if root.is_file():
        candidates = [(root, root.name)]
    else:
        candidates = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for name in filenames:
                local = Path(dirpath) / name
                # Under the folder's own name: a dataset root named for its category ("washer") keeps that name
                # on the engine, where readers and models take the category from it.
                candidates.append((local, f"{root.name}/{local.relative_to(root).as_posix()}"))
    for local, rel in sorted(candidates, key=lambda c: c[1]):
        try:
            st = local.stat()
        except OSError as exc:
            raise DefectScopeError(f"{local}: cannot read it for the upload ({exc.strerror})") from None
        if not local.is_file():
            continue  # a dangling link, a socket...
        abs_path = local.resolve()
        try:
            digest, read = cache.sha256(abs_path, st)
        except OSError as exc:
            raise DefectScopeError(f"{local}: cannot read it for the upload ({exc.strerror})") from None
        manifest.hashed_files += read
        manifest.files.append(ManifestFile(rel, st.st_size, digest, local))
    cache.save()
    if not manifest.files:
        raise DefectScopeError(f"{root}: no files to upload")
    return manifest
