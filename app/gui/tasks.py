"""Run a function off the GUI thread and get its result back on the GUI thread.

Datasets load, masks decode and prediction files parse here, so the event loop never waits on a disk.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(str)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals) -> None:
        super().__init__()
        self.fn = fn
        self.signals = signals

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # reported as one readable line; the traceback goes to stderr for debugging
            traceback.print_exc()
            self.signals.failed.emit(str(exc) or exc.__class__.__name__)
            return
        self.signals.done.emit(result)


class TaskRunner(QObject):
    """A small pool; callbacks run on the GUI thread (queued signals) and are skipped once the runner is gone."""

    def __init__(self, threads: int = 2, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self._live: set[_Signals] = set()

    def run(
        self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        signals = _Signals()  # created here, so it lives on the GUI thread and its slots run there
        self._live.add(signals)

        def finished(result: Any) -> None:
            self._live.discard(signals)
            if on_done is not None:
                on_done(result)

        def failed(message: str) -> None:
            self._live.discard(signals)
            if on_error is not None:
                on_error(message)

        signals.done.connect(finished)
        signals.failed.connect(failed)
        self.pool.start(_Task(fn, signals))

    def wait(self, msecs: int = 10_000) -> bool:
        return self.pool.waitForDone(msecs)
