"""Where the GUI's engine connection is configured: local engine, or a remote one by URL + token (+ CA file)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

from PySide6.QtCore import QSettings

from engine.home import default_data_home

Mode = Literal["local", "remote"]
DEFAULT_REMOTE_URL = "http://127.0.0.1:8765"



@dataclass
class EngineSettings:
    mode: Mode = "local"
    url: str = DEFAULT_REMOTE_URL  # remote mode only; a local engine picks a free port
    token: str = ""
    tls_ca: str = ""  # certificate (file) to trust for an https engine, e.g. its self-signed cert.pem


def gui_settings() -> QSettings:
    """The GUI's ini file in the data home (so $DEFECTSCOPE_HOME isolates tests and portable installs)."""
    return QSettings(str(default_data_home() / "gui.ini"), QSettings.Format.IniFormat)


def load_settings() -> EngineSettings:
    s = gui_settings()
    mode = str(s.value("engine/mode", "local"))
    return EngineSettings(
        mode="remote" if mode == "remote" else "local",
        url=str(s.value("engine/url", DEFAULT_REMOTE_URL) or DEFAULT_REMOTE_URL),
        token=str(s.value("engine/token", "") or ""),
        tls_ca=str(s.value("engine/tls_ca", "") or ""),
    )


def save_settings(settings: EngineSettings) -> None:
    s = gui_settings()
    s.setValue("engine/mode", settings.mode)
    s.setValue("engine/url", settings.url)
    s.setValue("engine/token", settings.token)
    s.setValue("engine/tls_ca", settings.tls_ca)
    s.sync()
    # The file holds a bearer token: readable by this user only, like the engine's own token file.
    with contextlib.suppress(OSError):
        os.chmod(s.fileName(), 0o600)


