"""The engine's upload cache: files stored by content (SHA-256), folders built from them on commit.

Protocol (the routes are engine.server.upload_routes; the client is EngineClient.upload_folder):

1. `POST /uploads/sessions {"files": [{"path", "size", "sha256"}, ...]}` -> `{"session", "missing": [sha256...],
   "missing_bytes"}`. Every path is checked like a zip member (engine.server.uploads.check_upload_path), sizes
   and the file count against UploadLimits; the engine remembers the manifest (on disk: it survives a restart).
2. `PUT /uploads/blobs/{sha256}` with `Content-Range: bytes START-END/TOTAL`, for each missing blob, in chunks.
   `GET /uploads/blobs/{sha256}` says how many bytes arrived (`received`; the session's answer lists them too,
   as `partial`): an interrupted upload resumes there.
   Chunks collect in `partial/<sha256>`; once complete the content is hashed and only a match is renamed into
   `blobs/` (a mismatch is dropped and refused with a 400). Only blobs an open session lists are accepted.
3. `POST /uploads/sessions/{session}/commit` -> `{"id", "ref": "upload:<id>", ...}`: the folder is built from the
   blobs (hard links, copies where links fail) in a hidden staging folder and renamed into `uploads/<id>`, so a
   folder either exists complete or not at all. The id is the hash of the manifest: the same folder committed
   twice is one upload.

The cache holds at most `max_bytes` (engine serve --upload-cache-gb). Over it, after each commit and at start-up,
blobs no committed upload uses go first (least recently used first), then committed uploads, least recently used
first (each with the blobs only it used); an upload a queued or running job uses is never evicted (the engine
holds `UploadStore.lock` from resolving a job's refs until the job is queued). GET /uploads shows the limit, the use and each upload's last use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.checksums import sha256_file
from engine.fsutil import atomic_write_text, staging_dir
from engine.server import layout
from engine.server.uploads import UploadError, UploadLimits, check_upload_path

SHA256 = re.compile(r"[0-9a-f]{64}")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# A session nobody committed is forgotten after this long (its partial blobs with it).
SESSION_TTL_S = 24 * 3600.0
EVICTION_RULE = ("over the limit, blobs no committed upload uses go first (least recently used first), then "
                 "committed uploads, least recently used first; never one a queued or running job uses")


class UploadRefused(UploadError):
    """An upload request refused with an HTTP status: 400 bad input, 404 unknown, 409 not now, 413 too big."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True)
class UploadEntry:
    id: str
    bytes: int
    files: int
    created: float
    last_used: float
    in_use: bool = False

    def to_dict(self) -> dict:
        return {**asdict(self), "ref": layout.upload_ref(self.id)}


class UploadStore:
    def __init__(
        self, data_dir: Path, limits: UploadLimits, max_bytes: int,
        in_use: Callable[[], set[str]] = set,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.limits = limits
        self.max_bytes = max_bytes
        self._in_use = in_use
        folder = layout.upload_store_folder(data_dir)
        self.uploads = layout.uploads_dir(data_dir)
        self.blobs, self.partial = folder.blobs, folder.partial
        self.sessions, self.entries_dir = folder.sessions, folder.entries
        for d in (self.uploads, self.blobs, self.partial, self.sessions, self.entries_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Commits, evictions, deletions, bookkeeping; held by Engine.submit while a job's upload refs are resolved
        # and the job queued, so an eviction never takes an upload between the two.
        self.lock = threading.RLock()
        self._blob_locks: dict[str, threading.Lock] = {}
        self._wanted: dict[str, int] = {}  # sha256 -> size, over every open session
        self._recover()

    # -- start-up ---------------------------------------------------------------------------------------------

    def _recover(self) -> None:
        """After a crash: half-built folders go (nothing half-visible), old sessions go, partial blobs that an
        open session still wants stay to be resumed (they are verified before being published), others go."""
        for p in self.uploads.iterdir():
            if p.name.startswith("."):  # staging folders and zip temp files: no commit is live at start-up
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self._expire_sessions()
        self.evict()

    def _expire_sessions(self) -> None:
        """Forget sessions older than SESSION_TTL_S (or unreadable) and the partial blobs only they wanted."""
        with self.lock:
            now = time.time()
            wanted: dict[str, int] = {}
            for path in self.sessions.glob("*.json"):
                try:
                    session = json.loads(path.read_text())
                    if now - float(session["created"]) > SESSION_TTL_S:
                        raise ValueError("expired")
                    for f in session["files"]:
                        wanted[f["sha256"]] = int(f["size"])
                except (OSError, ValueError, KeyError, TypeError):
                    path.unlink(missing_ok=True)
            self._wanted = wanted
            for p in self.partial.iterdir():
                with contextlib.suppress(OSError):
                    if p.name not in wanted or p.stat().st_size > wanted[p.name]:
                        p.unlink()

    # -- sessions ---------------------------------------------------------------------------------------------

    def open_session(self, files: object) -> dict:
        manifest = self._checked_manifest(files)
        session = uuid.uuid4().hex
        self._expire_sessions()
        with self.lock:
            atomic_write_text(self.sessions / f"{session}.json",
                              json.dumps({"created": time.time(), "files": manifest}))
            for f in manifest:
                self._wanted[f["sha256"]] = f["size"]
            if any(f["sha256"] == EMPTY_SHA256 for f in manifest) and not self._blob(EMPTY_SHA256).exists():
                self._publish(EMPTY_SHA256, None)
        missing: dict[str, int] = {}
        for f in manifest:
            if not self._blob(f["sha256"]).exists():
                missing[f["sha256"]] = f["size"]
        partial = {}  # what an interrupted upload already sent: the client resumes there
        for sha in missing:
            with contextlib.suppress(OSError):
                if (received := (self.partial / sha).stat().st_size) > 0:
                    partial[sha] = received
        return {"session": session, "files": len(manifest), "bytes": sum(f["size"] for f in manifest),
                "missing": list(missing), "missing_bytes": sum(missing.values()), "partial": partial}

    def _checked_manifest(self, files: object) -> list[dict]:
        lim = self.limits
        if not isinstance(files, list) or not files:
            raise UploadRefused(400, "files: a non-empty list of {path, size, sha256} is expected", "files")
        if len(files) > lim.max_members:
            raise UploadRefused(413, f"files: {len(files)} files (limit {lim.max_members})", "files")
        out, paths, sizes, total = [], set(), {}, 0
        for i, f in enumerate(files):
            where = f"files.{i}"
            if not isinstance(f, dict) or set(f) != {"path", "size", "sha256"}:
                raise UploadRefused(400, f"{where}: expected exactly path, size and sha256", where)
            try:
                path = check_upload_path(f["path"], "file", lim)
            except UploadError as exc:
                raise UploadRefused(400, f"{where}.path: {exc}", f"{where}.path") from None
            size, digest = f["size"], f["sha256"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise UploadRefused(400, f"{where}.size: file '{path}': not a byte count", f"{where}.size")
            if size > lim.max_member_bytes:
                raise UploadRefused(413, f"{where}.size: file '{path}': {size} bytes (limit {lim.max_member_bytes})",
                                    f"{where}.size")
            if not isinstance(digest, str) or not SHA256.fullmatch(digest):
                raise UploadRefused(400, f"{where}.sha256: file '{path}': not a lowercase hex SHA-256",
                                    f"{where}.sha256")
            if size == 0 and digest != EMPTY_SHA256:
                raise UploadRefused(400, f"{where}.sha256: file '{path}' is empty but its hash is not the empty "
                                    "content's", f"{where}.sha256")
            if sizes.setdefault(digest, size) != size:
                raise UploadRefused(400, f"{where}.size: file '{path}': same SHA-256 as another file of a different "
                                    "size", f"{where}.size")
            if path in paths:
                raise UploadRefused(400, f"{where}.path: file '{path}' listed twice", f"{where}.path")
            paths.add(path)
            total += size
            if total > lim.max_total_bytes:
                raise UploadRefused(413, f"files: more than {lim.max_total_bytes} bytes in one upload", "files")
            out.append({"path": path, "size": size, "sha256": digest})
        # A name both a file and a folder ("a" and "a/b") cannot be built.
        for path in paths:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in paths:
                    raise UploadRefused(400, f"files: '{parent}' is a file and a folder of '{path}'", "files")
                parent = parent.rpartition("/")[0]
        if total > self.max_bytes:
            raise UploadRefused(413, f"files: {total} bytes do not fit in the engine's upload cache "
                                f"({self.max_bytes} bytes, engine serve --upload-cache-gb)", "files")
        return sorted(out, key=lambda f: f["path"])

    def _load_session(self, session: str) -> list[dict]:
        if not re.fullmatch(r"[0-9a-f]{32}", session):
            raise UploadRefused(404, f"no upload session '{session}'")
        try:
            return json.loads((self.sessions / f"{session}.json").read_text())["files"]
        except (OSError, ValueError, KeyError):
            raise UploadRefused(404, f"no upload session '{session}' (unknown, committed or expired)") from None

    # -- blobs ------------------------------------------------------------------------------------------------

    def _blob(self, sha: str) -> Path:
        return self.blobs / sha

    def _checked_sha(self, sha: str) -> str:
        if not SHA256.fullmatch(sha):
            raise UploadRefused(400, f"blob '{sha[:80]}': not a lowercase hex SHA-256", "sha256")
        return sha

    def blob_state(self, sha: str) -> dict:
        """How much of a blob the engine has: `received` bytes of `size`; `complete` once verified."""
        sha = self._checked_sha(sha)
        if self._blob(sha).exists():
            size = self._blob(sha).stat().st_size
            return {"sha256": sha, "size": size, "received": size, "complete": True}
        size = self._wanted.get(sha)
        if size is None:
            raise UploadRefused(404, f"blob {sha}: no open upload session lists it")
        part = self.partial / sha
        received = part.stat().st_size if part.exists() else 0
        return {"sha256": sha, "size": size, "received": received, "complete": False}

    def write_chunk(self, sha: str, start: int, end: int, total: int, data: bytes) -> dict:
        """Bytes START..END (inclusive) of a blob of TOTAL bytes. A chunk may repeat bytes already received (a
        retry); one that would leave a gap is refused with the offset to resume from."""
        sha = self._checked_sha(sha)
        lock = self._blob_locks.setdefault(sha, threading.Lock())
        with lock:
            if self._blob(sha).exists():
                return self.blob_state(sha)
            expected = self._wanted.get(sha)
            if expected is None:
                raise UploadRefused(404, f"blob {sha}: no open upload session lists it")
            if total != expected:
                raise UploadRefused(400, f"blob {sha}: Content-Range total {total} is not the manifest's size "
                                    f"{expected}", "Content-Range")
            if not (0 <= start <= end < total) or end - start + 1 != len(data):
                raise UploadRefused(400, f"blob {sha}: Content-Range bytes {start}-{end}/{total} does not match "
                                    f"the {len(data)} bytes sent", "Content-Range")
            part = self.partial / sha
            received = part.stat().st_size if part.exists() else 0
            if start > received:
                raise UploadRefused(409, f"blob {sha}: chunk starts at byte {start} but {received} bytes were "
                                    f"received; resume from {received}", "Content-Range")
            with part.open("r+b" if part.exists() else "wb") as fh:
                fh.seek(start)
                fh.write(data)
                fh.truncate()
                if end + 1 == total:
                    fh.flush()
                    os.fsync(fh.fileno())
            if end + 1 == total:
                self._publish(sha, part)
                self._blob_locks.pop(sha, None)  # later writers find the blob stored and return at once
            return self.blob_state(sha)

    def _publish(self, sha: str, part: Path | None) -> None:
        """Verify a complete partial blob and rename it into the store (a mismatch is dropped, never stored)."""
        if part is None:  # the empty content: nothing to receive
            part = self.partial / sha
            part.write_bytes(b"")
        if sha256_file(part) != sha:
            part.unlink(missing_ok=True)
            raise UploadRefused(400, f"blob {sha}: the bytes received do not have this SHA-256 (dropped; send the "
                                "file again)", "sha256")
        os.chmod(part, 0o444)  # hard-linked into upload folders: nothing may change a stored content in place
        os.replace(part, self._blob(sha))

    # -- commit -----------------------------------------------------------------------------------------------

    def commit(self, session: str) -> UploadEntry:
        with self.lock:
            files = self._load_session(session)
            missing = [f for f in files if not self._blob(f["sha256"]).exists()]
            if missing:
                raise UploadRefused(409, f"{len(missing)} of {len(files)} files not uploaded yet (first: "
                                    f"'{missing[0]['path']}', blob {missing[0]['sha256']})")
            canonical = json.dumps([[f["path"], f["size"], f["sha256"]] for f in files], separators=(",", ":"))
            upload_id = hashlib.sha256(canonical.encode()).hexdigest()[:16]
            final = layout.upload_dir(self.data_dir, upload_id)
            if not final.is_dir():
                staging = staging_dir(final)
                try:
                    for f in files:
                        target = staging / f["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(self._blob(f["sha256"]), target)
                        except OSError:  # a file system without hard links, or a link count at its limit
                            shutil.copyfile(self._blob(f["sha256"]), target)
                    os.replace(staging, final)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            now = time.time()
            old = self._read_entry(upload_id)
            entry = UploadEntry(upload_id, sum(f["size"] for f in files), len(files),
                                old.created if old else now, now)
            self._write_entry(entry)
            (self.sessions / f"{session}.json").unlink(missing_ok=True)
            self._expire_sessions()
            self.evict(keep={upload_id})
            return entry

    # -- committed uploads ------------------------------------------------------------------------------------

    def _read_entry(self, upload_id: str) -> UploadEntry | None:
        try:
            return UploadEntry(**json.loads((self.entries_dir / f"{upload_id}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _write_entry(self, entry: UploadEntry) -> None:
        data = asdict(entry)
        data.pop("in_use")
        atomic_write_text(self.entries_dir / f"{entry.id}.json", json.dumps(data))

    def _entry(self, folder: Path) -> UploadEntry:
        """The bookkeeping of a committed folder; a zip upload (or one whose entry was lost) is measured."""
        entry = self._read_entry(folder.name)
        if entry is None:
            files = [p for p in folder.rglob("*") if p.is_file()]
            mtime = folder.stat().st_mtime
            entry = UploadEntry(folder.name, sum(p.stat().st_size for p in files), len(files), mtime, mtime)
            self._write_entry(entry)
        return entry

    def _folders(self) -> Iterable[Path]:
        for p in sorted(self.uploads.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                yield p

    def entries(self) -> list[UploadEntry]:
        in_use = self._in_use()
        with self.lock:
            return [UploadEntry(**{**asdict(e), "in_use": e.id in in_use})
                    for e in sorted((self._entry(f) for f in self._folders()), key=lambda e: e.last_used)]

    def listing(self) -> dict:
        entries = self.entries()
        return {"limit_bytes": self.max_bytes, "used_bytes": self.used_bytes(), "eviction": EVICTION_RULE,
                "uploads": [e.to_dict() for e in entries]}

    def resolve(self, upload_id: str, path: str = "") -> Path:
        """The folder (or file inside it) of a committed upload, marked as used now; LookupError if absent."""
        with self.lock:
            try:
                folder = layout.upload_dir(self.data_dir, upload_id)
            except ValueError:
                raise LookupError(f"not an upload id: {upload_id!r}") from None
            if not folder.is_dir():
                raise LookupError(f"this engine has no upload '{upload_id}' (never committed, deleted or evicted)")
            target = folder / path if path else folder
            if path and not target.exists():
                raise LookupError(f"upload '{upload_id}' has no file '{path}'")
            entry = self._entry(folder)
            self._write_entry(UploadEntry(**{**asdict(entry), "last_used": time.time(), "in_use": False}))
            return target

    def delete(self, upload_id: str) -> None:
        with self.lock:
            try:
                folder = layout.upload_dir(self.data_dir, upload_id)
            except ValueError:
                raise UploadRefused(404, f"no upload '{upload_id}'") from None
            if not folder.is_dir():
                raise UploadRefused(404, f"no upload '{upload_id}'")
            if upload_id in self._in_use():
                raise UploadRefused(409, f"upload '{upload_id}' is used by a queued or running job")
            self._remove_upload(folder)
            self._drop_unreferenced_blobs()

    def _remove_upload(self, folder: Path) -> None:
        # Renamed aside first: a job resolving it afterwards finds it gone, never half-deleted.
        aside = folder.parent / f".{folder.name}.deleting-{uuid.uuid4().hex[:8]}"
        os.replace(folder, aside)
        (self.entries_dir / f"{folder.name}.json").unlink(missing_ok=True)
        shutil.rmtree(aside, ignore_errors=True)

    # -- size and eviction ------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes on disk, each file counted once however many upload folders link it."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for top in (self.blobs, self.partial, self.uploads):
            for dirpath, _dirs, names in os.walk(top):
                for name in names:
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(dirpath, name))
                        if (st.st_dev, st.st_ino) not in seen:
                            seen.add((st.st_dev, st.st_ino))
                            total += st.st_size
        return total

    def _unreferenced_blobs(self) -> list[os.DirEntry]:
        """Blobs no committed folder links and no open session lists, least recently stored first."""
        found = []
        for entry in os.scandir(self.blobs):
            with contextlib.suppress(OSError):
                st = entry.stat()
                if st.st_nlink == 1 and entry.name not in self._wanted:
                    found.append((st.st_mtime, entry))
        return [e for _t, e in sorted(found, key=lambda x: x[0])]

    def _drop_unreferenced_blobs(self) -> int:
        freed = 0
        for entry in self._unreferenced_blobs():
            with contextlib.suppress(OSError):
                freed += entry.stat().st_size
                os.unlink(entry.path)
        return freed

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Apply the size limit (EVICTION_RULE); returns what went ("blob:<sha>", "upload:<id>")."""
        gone: list[str] = []
        with self.lock:
            used = self.used_bytes()
            if used <= self.max_bytes:
                return gone
            for entry in self._unreferenced_blobs():
                if used <= self.max_bytes:
                    return gone
                with contextlib.suppress(OSError):
                    size = entry.stat().st_size
                    os.unlink(entry.path)
                    used -= size
                    gone.append(f"blob:{entry.name}")
            protected = set(keep) | self._in_use()
            for e in sorted((self._entry(f) for f in self._folders()), key=lambda e: e.last_used):
                if used <= self.max_bytes:
                    break
                if e.id in protected:
                    continue
                self._remove_upload(layout.upload_dir(self.data_dir, e.id))
                self._drop_unreferenced_blobs()
                gone.append(layout.upload_ref(e.id))
                used = self.used_bytes()
        return gone
