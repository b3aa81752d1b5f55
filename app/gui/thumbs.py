"""Thumbnails rendered off the GUI thread, kept in a bounded memory LRU and an on-disk cache.

Keys are absolute image paths (see `thumb_key`), so one cache can serve every view of the app and survive a
dataset being closed and reopened: two datasets never collide the way root-relative sample keys would.

Scheduling: pending requests form a LIFO queue, so the rows the user is looking at *now* are rendered before
those scrolled past a second ago. The queue is bounded (the oldest requests fall off) and `retain()` drops
everything no longer on screen, so a fast scroll through 10,000 images never decodes the 9,900 it flew over.
A dropped request is simply asked again by the view the next time that row is painted. (That scheduling is
why thumbnails have their own pool instead of app.gui.tasks, whose queue is first in, first out.)

Disk entries are named by a hash of (absolute path, mtime_ns, file size, thumb size, format version): an edited
image gets a new entry, and a stale one is never served. They are written to a temp file and renamed, so a
crash or a second app instance never leaves a half-written JPEG behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage, QPixmap

from engine.datasets.imageio import read_preview
from engine.errors import ImageReadError
from engine.home import default_data_home

log = logging.getLogger(__name__)

DEFAULT_THUMB_SIZE = 128
DEFAULT_MEMORY_ITEMS = 2000
# Enough to cover several screens of a large grid; older requests are dropped rather than decoded.
DEFAULT_MAX_PENDING = 512
# Bump when the rendering changes, so existing disk entries are ignored instead of served.
_DISK_FORMAT = 1
_JPEG_QUALITY = 88


def thumb_key(path: str | Path) -> str:
    """The cache key of an image: its absolute path as a string (no symlink resolution, no I/O)."""
    return os.path.abspath(os.fspath(path))


def default_cache_dir() -> Path:
    """<data_home>/cache/thumbs, honouring $DEFECTSCOPE_HOME."""
    return default_data_home() / "cache" / "thumbs"


class ThumbnailCache(QObject):
    """Asynchronous thumbnail provider.

    Call `request(path)` whenever a view needs a thumbnail it could not `get()`; exactly one of
    `thumbnail_ready(key)` or `failed(key, reason)` follows on the GUI thread, unless the request was dropped
    as stale (then the view asks again when the row is painted again).
    """

    thumbnail_ready = Signal(str)
    failed = Signal(str, str)
    # Worker -> GUI thread hand-over (a queued connection, since the emitter runs on a pool thread).
    _rendered = Signal(str, object, str)

    def __init__(
        self,
        size: int = DEFAULT_THUMB_SIZE,
        cache_dir: str | Path | None = None,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
        max_pending: int = DEFAULT_MAX_PENDING,
        threads: int | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._size = int(size)
        self._dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._memory_items = max(1, int(memory_items))
        self._max_pending = max(1, int(max_pending))
        self._memory: OrderedDict[str, QPixmap] = OrderedDict()
        self._errors: dict[str, str] = {}
        # Shared with the workers, always under _lock.
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, None] = OrderedDict()  # an ordered set of keys, newest last
        self._inflight: set[str] = set()
        self._workers = 0
        self._closed = False
        # A private pool: the global one may be busy with unrelated long jobs.
        self._pool = QThreadPool(self)
        self._max_workers = threads or max(1, min(4, QThreadPool.globalInstance().maxThreadCount()))
        self._pool.setMaxThreadCount(self._max_workers)
        self._rendered.connect(self._on_rendered)
        # Counters for diagnostics and tests: how much work the views really caused.
        self.stats: dict[str, int] = {"requests": 0, "rendered": 0, "disk_hits": 0, "dropped": 0, "failed": 0}

    # ---------------------------------------------------------------------------------------------------------
    # GUI-thread API

    @property
    def size(self) -> int:
        return self._size

    @property
    def cache_dir(self) -> Path:
        return self._dir

    def get(self, path: str | Path) -> QPixmap | None:
        """The thumbnail if it is in memory (never touches the disk), refreshing its LRU position."""
        key = thumb_key(path)
        pix = self._memory.get(key)
        if pix is not None:
            self._memory.move_to_end(key)
        return pix

    def error(self, path: str | Path) -> str | None:
        """Why the image could not be thumbnailed, or None."""
        return self._errors.get(thumb_key(path))

    def request(self, path: str | Path) -> None:
        """Queue a thumbnail unless it is cached, failed, already queued (then it moves to the front) or running."""
        key = thumb_key(path)
        self.stats["requests"] += 1
        if key in self._memory or key in self._errors:
            return
        with self._lock:
            if self._closed or key in self._inflight:
                return
            self._pending[key] = None
            self._pending.move_to_end(key)
            while len(self._pending) > self._max_pending:
                self._pending.popitem(last=False)
                self.stats["dropped"] += 1
            start = self._workers < self._max_workers
            if start:
                self._workers += 1
        if start:
            self._pool.start(_Drain(self))

    def is_pending(self, path: str | Path) -> bool:
        key = thumb_key(path)
        with self._lock:
            return key in self._pending or key in self._inflight

    def retain(self, paths: Iterable[str | Path]) -> int:
        """Drop queued requests whose key is not among `paths` (the rows on screen); returns how many."""
        keep = {thumb_key(p) for p in paths}
        with self._lock:
            stale = [k for k in self._pending if k not in keep]
            for k in stale:
                del self._pending[k]
        self.stats["dropped"] += len(stale)
        return len(stale)

    def cancel_all(self) -> None:
        """Forget every queued request (running ones still finish and are cached)."""
        with self._lock:
            self.stats["dropped"] += len(self._pending)
            self._pending.clear()

    def invalidate(self, path: str | Path) -> None:
        """Forget the memory copy and any error, e.g. after the file was replaced on disk."""
        key = thumb_key(path)
        self._memory.pop(key, None)
        self._errors.pop(key, None)

    def clear_errors(self) -> None:
        """Forget remembered failures so they are tried again (a dataset being reopened may have been fixed)."""
        self._errors.clear()

    def clear_memory(self) -> None:
        self._memory.clear()
        self._errors.clear()

    def wait(self, msecs: int = 5000) -> bool:
        """Block until the workers are idle (tests and shutdown)."""
        return self._pool.waitForDone(msecs)

    def close(self, msecs: int = 5000) -> None:
        """Stop accepting work, drop the queue and wait for running renders: call before the app exits."""
        with self._lock:
            self._closed = True
            self._pending.clear()
        self._pool.waitForDone(msecs)

    # ---------------------------------------------------------------------------------------------------------
    # Worker side (runs on pool threads; touches shared state only under _lock)

    def _next(self) -> str | None:
        with self._lock:
            if self._closed or not self._pending:
                self._workers -= 1
                return None
            key, _ = self._pending.popitem(last=True)  # newest first: what is on screen now
            self._inflight.add(key)
            return key

    def _render(self, key: str) -> tuple[QImage | None, str]:
        try:
            st = os.stat(key)
        except OSError as exc:
            return None, "file not found" if isinstance(exc, FileNotFoundError) else f"cannot read file ({exc})"
        disk = self._disk_path(key, st)
        img = _load_cached(disk)
        if img is not None:
            with self._lock:
                self.stats["disk_hits"] += 1
            return img, ""
        try:
            rgb = read_preview(key, max_side=self._size)
        except ImageReadError as exc:
            return None, exc.reason
        except Exception as exc:  # a decoder bug must become a badge, never kill the worker
            return None, f"cannot decode image ({exc.__class__.__name__}: {exc})"
        _store_cached(disk, rgb)
        with self._lock:
            self.stats["rendered"] += 1
        return _to_qimage(rgb), ""

    def _disk_path(self, key: str, st: os.stat_result) -> Path:
        ident = f"{_DISK_FORMAT}\0{key}\0{st.st_mtime_ns}\0{st.st_size}\0{self._size}"
        digest = hashlib.sha1(ident.encode("utf-8", "surrogatepass")).hexdigest()
        # Two-level fan-out keeps directories small enough for every file system at 100k+ thumbnails.
        return self._dir / digest[:2] / f"{digest}.jpg"

    def _deliver(self, key: str, image: QImage | None, reason: str) -> None:
        with self._lock:
            self._inflight.discard(key)
        with contextlib.suppress(RuntimeError):  # the cache was deleted while we rendered: nobody to tell
            self._rendered.emit(key, image, reason)

    # ---------------------------------------------------------------------------------------------------------
    # Back on the GUI thread

    @Slot(str, object, str)
    def _on_rendered(self, key: str, image: QImage | None, reason: str) -> None:
        if image is None:
            self._errors[key] = reason
            self.stats["failed"] += 1
            self.failed.emit(key, reason)
            return
        # QPixmap must be created on the GUI thread; it paints faster than a QImage in the delegate.
        self._memory[key] = QPixmap.fromImage(image)
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
        self.thumbnail_ready.emit(key)


class _Drain(QRunnable):
    """One worker: renders queued thumbnails, newest first, until the queue is empty."""

    def __init__(self, cache: ThumbnailCache) -> None:
        super().__init__()
        self._cache = cache

    def run(self) -> None:
        cache = self._cache
        while (key := cache._next()) is not None:
            try:
                image, reason = cache._render(key)
            except Exception as exc:  # defensive: any bug still ends the request with a visible reason
                log.exception("thumbnail of %s failed", key)
                image, reason = None, f"thumbnail failed ({exc.__class__.__name__}: {exc})"
            cache._deliver(key, image, reason)


def _to_qimage(rgb: np.ndarray) -> QImage:
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    # .copy(): the QImage must own its pixels, the numpy buffer dies with this frame.
    return QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888).copy()


def _load_cached(path: Path) -> QImage | None:
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            return _to_qimage(np.asarray(im.convert("RGB")))
    except Exception:  # a damaged cache entry is re-rendered, never shown
        log.debug("ignoring unreadable thumbnail cache entry %s", path)
        return None


def _store_cached(path: Path, rgb: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=_JPEG_QUALITY)
        os.replace(tmp, path)  # atomic: readers see the old entry, the new one, or none
    except OSError as exc:  # a read-only or full disk only costs us the cache, not the thumbnail
        log.debug("cannot write thumbnail cache %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
