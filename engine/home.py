"""Where DefectScope keeps its per-user data (demo sets, engine data, annotations, caches, settings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_data_home() -> Path:
    """$DEFECTSCOPE_HOME, else the platform's per-user data folder for DefectScope."""
    env = os.environ.get("DEFECTSCOPE_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else Path.home() / "AppData" / "Local") / "DefectScope"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "DefectScope"
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says relative paths are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "defectscope"
