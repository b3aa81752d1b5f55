"""Run a function off the GUI thread and get its result, or one readable line of error, back on the GUI thread.

Datasets load, masks decode, prediction files parse and every engine call runs here, so the event loop never
waits on a disk or the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import shiboken6
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot

from engine.errors import DefectScopeError

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    """One readable line for the user; tracebacks of unexpected errors go to the log, not the screen."""
    if isinstance(exc, DefectScopeError):
        text = str(exc)
    elif isinstance(exc, httpx.HTTPError):
        text = f"network error ({exc.__class__.__name__}: {exc})"
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror or exc}"
    else:
        log.error("unexpected error in a background task", exc_info=exc)
        text = f"{exc.__class__.__name__}: {exc}"
    text = " ".join(text.split()) or exc.__class__.__name__
    return text if len(text) <= 400 else text[:397] + "..."


class _Relay(QObject):
    """Carries pool-thread results to the GUI thread.

    One app-lifetime object, never deleted: emitting on a QObject that was deleted meanwhile (a link, a panel)
    from another thread would crash; the relay checks on the GUI thread whether the receiver still exists.
    """

    delivered = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.delivered.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _dispatch(self, payload: tuple[Callable[[], bool] | None, Callable[[Any], None] | None, Any]) -> None:
        guard, callback, value = payload
        if callback is None or (guard is not None and not guard()):
            return
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, QObject) and not shiboken6.isValid(owner):
            return
        callback(value)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], relay: _Relay, on_done: Callable[[Any], None] | None,
                 on_error: Callable[[str], None] | None, guard: Callable[[], bool] | None) -> None:
        super().__init__()
        self._fn, self._relay, self._on_done, self._on_error, self._guard = fn, relay, on_done, on_error, guard

    def run(self) -> None:
        try:
            payload = (self._guard, self._on_done, self._fn())
        except Exception as exc:  # every failure becomes one line for whoever asked
            payload = (self._guard, self._on_error, describe_error(exc))
        self._relay.delivered.emit(payload)


_relay: _Relay | None = None
# Separate lanes, so a queue of disk work (mask decodes while arrowing through a set, PRO maps) never delays
# the engine polls that keep the connection state and job progress current, and vice versa; the segmenter
# gets one thread of its own (its encoder already uses both cores; clicks are answered in order), and so do
# the metrics' numeric passes (the PRO curve), so a recomputation never queues behind mask decodes.
LANE_THREADS = {"engine": 4, "disk": 2, "segmenter": 1, "compute": 1}
_pools: dict[str, QThreadPool] = {}


def background_executor(lane: str = "engine") -> tuple[_Relay, QThreadPool]:
    # Created lazily on first use, i.e. on the GUI thread: the relay must live there.
    global _relay
    if _relay is None:
        _relay = _Relay()
    if lane not in _pools:
        pool = QThreadPool()
        pool.setMaxThreadCount(LANE_THREADS[lane])
        _pools[lane] = pool
    return _relay, _pools[lane]


def run_in_background(fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
                      on_error: Callable[[str], None] | None = None,
                      guard: Callable[[], bool] | None = None, lane: str = "engine") -> None:
    """Run `fn` on a pool thread; `on_done(result)` or `on_error(one_line)` runs later on the GUI thread.

    Neither runs if `guard()` is false by then, or if the callback is a bound method of a deleted QObject.
    """
    relay, pool = background_executor(lane)
    pool.start(_Task(fn, relay, on_done, on_error, guard))


def post_to_gui(callback: Callable[[Any], None], value: Any, guard: Callable[[], bool] | None = None) -> None:
    """From any thread: `callback(value)` later on the GUI thread (dropped like run_in_background's answers).

    For news in the middle of a background task (an upload's progress), which run_in_background's one answer
    cannot carry.
    """
    relay, _pool = background_executor()
    relay.delivered.emit((guard, callback, value))


def wait_for_background(msecs: int = 10_000) -> bool:
    """Wait for queued and running tasks (at exit, so none outlives the objects it reports to)."""
    return all(pool.waitForDone(msecs) for pool in _pools.values())
