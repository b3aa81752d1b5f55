"""Class prompts: the phrasings an open-set detector learns and searches a defect class by.

A prompts file is a JSON object {class name: [phrasing, ...]} (a single string is one phrasing), e.g.
{"crazing": ["crazing", "fine network of surface cracks"]}. A class without an entry is searched by its own name
(underscores and hyphens read as spaces), so a dataset's class list alone is a valid set of prompts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from engine.errors import DatasetError

PROMPTS_FILE = "class_prompts.json"  # the workbench keeps a dataset's edited prompts under this name


def spoken(name: str) -> str:
    """A class name as words: 'rolled-in_scale' -> 'rolled in scale'."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def read_prompts(path: str | Path) -> dict[str, list[str]]:
    """A prompts file (or a folder holding PROMPTS_FILE: a remote engine is sent folders), checked: a DatasetError
    names the file and the bad entry."""
    p = Path(path)
    if p.is_dir():
        p = p / PROMPTS_FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{p}: unreadable prompts file ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{p}: a prompts file is a JSON object {{class name: [phrasings]}}")
    out: dict[str, list[str]] = {}
    for name, value in data.items():
        phrasings = [value] if isinstance(value, str) else value
        if not isinstance(phrasings, list) or not all(isinstance(t, str) for t in phrasings):
            raise DatasetError(f"{p}: class {name!r}: phrasings must be a string or a list of strings")
        cleaned = [t.strip() for t in phrasings if t.strip()]
        if not cleaned:
            raise DatasetError(f"{p}: class {name!r}: no phrasing")
        out[str(name)] = list(dict.fromkeys(cleaned))
    return out


def prompts_for(classes: Iterable[str], given: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each class's phrasings: the given ones, else its name as words."""
    given = given or {}
    return {c: list(given.get(c) or [spoken(c)]) for c in classes}


def write_prompts(path: str | Path, prompts: dict[str, list[str]]) -> None:
    Path(path).write_text(json.dumps(prompts, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
