"""Registry of dataset formats: each reader registers itself by name; no if/elif chain picks a reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from engine.datasets.types import Dataset
from engine.errors import DatasetError


class DatasetReader(Protocol):
    """A dataset format: can it read this root, and read it."""

    name: str
    description: str

    def detect(self, root: Path) -> bool: ...

    def load(self, root: Path, category: str | None = None) -> Dataset: ...


_READERS: dict[str, DatasetReader] = {}


def register_format(name: str, description: str = "") -> Callable[[type], type]:
    """Class decorator: instantiate the reader and register it under `name`."""

    def decorate(cls: type) -> type:
        reader = cls()
        reader.name = name
        doc_lines = (cls.__doc__ or "").strip().splitlines()
        reader.description = description or (doc_lines[0] if doc_lines else name)
        _READERS[name] = reader
        return cls

    return decorate


def formats() -> dict[str, DatasetReader]:
    _ensure_builtin_readers()
    return dict(_READERS)


def get_reader(name: str) -> DatasetReader:
    _ensure_builtin_readers()
    try:
        return _READERS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset format '{name}'; known: {', '.join(sorted(_READERS))}") from None


def detect_format(root: Path) -> str:
    """The first registered format whose detector accepts `root` (readers register most specific first)."""
    _ensure_builtin_readers()
    for name, reader in _READERS.items():
        if reader.detect(root):
            return name
    raise DatasetError(f"{root}: no known dataset layout found (known: {', '.join(_READERS)})")


def load_dataset(root: str | Path, format: str = "auto", category: str | None = None) -> Dataset:
    """Load a dataset in any registered format; per-file problems land in `Dataset.issues`."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: dataset path does not exist")
    name = detect_format(path) if format == "auto" else format
    return get_reader(name).load(path, category=category)


def _ensure_builtin_readers() -> None:
    # Importing the package registers every built-in reader (in detection order).
    import engine.datasets  # noqa: F401
