"""The Qt binding the app runs on must survive a GUI's worth of signal traffic."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")
if sys.version_info >= (3, 12):
    pytest.skip("True and None are immortal from Python 3.12: their refcounts cannot show the leak",
                allow_module_level=True)


def test_signal_emits_do_not_leak_references_to_true():
    # PySide6 6.12.0 dropped a reference to True per emit and aborted the interpreter after ~500 emits
    # (panning a pyqtgraph view emits hundreds): pyproject excludes it, this catches a regression.
    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        fired = Signal()

    e = Emitter()
    before = sys.getrefcount(True)
    for _ in range(300):
        e.fired.emit()
    assert sys.getrefcount(True) >= before - 10


def test_process_events_does_not_leak_references_to_none(qapp):
    # Same 6.12.0 family: each static processEvents() dropped a reference to None (abort after ~5,000 calls).
    before = sys.getrefcount(None)
    for _ in range(300):
        qapp.processEvents()
    assert sys.getrefcount(None) >= before - 10
