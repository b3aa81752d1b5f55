"""What a job sends to a remote engine: which path parameters name folders of this computer, and sending them.

A remote engine cannot read this computer's disk, so every path parameter (JobKind.path_params) whose value is a
local folder is uploaded first (EngineClient.upload_folder: content-addressed, chunked, resumable) and the job
names it by the returned "upload:<id>/<folder name>" reference: the folder keeps its name on the engine (an MVTec
category folder opened on its own is named by its folder: "washer" must still be "washer" there, or a job for
category washer finds none). Folders the engine made itself (a downloaded model) are named by their job's
artifact reference instead and never sent back. No Qt here: EngineLink drives it, the Jobs panel
shows the `Upload` records.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.client import EngineClient
from engine.errors import DefectScopeError
from engine.jobs.registry import job_kinds

UPLOADING, SENT, FAILED, CANCELLED = "uploading", "sent", "failed", "cancelled"
REF_PREFIXES = ("job:", "upload:")  # values the engine resolves itself: never a path of this computer

_ids = itertools.count(1)


@dataclass
class Upload:
    """One local folder on its way to the engine, as the Jobs panel shows it (updated on the GUI thread)."""

    kind: str  # the job kind it is sent for
    param: str  # the path parameter it fills ("pool[2]": item 2 of a list parameter)
    folder: Path
    cancel: threading.Event = field(repr=False, compare=False)  # shared by every upload of one submit
    id: str = field(default_factory=lambda: f"upload-{next(_ids)}")
    files: int = 0
    bytes_done: int = 0
    bytes_total: int = 0  # what the engine lacks: files it already has are not sent again
    sized: bool = False  # the engine said what it lacks (before: the folder is being hashed and compared)
    state: str = UPLOADING

    @property
    def fraction(self) -> float:
        if not self.bytes_total:
            return 1.0 if self.sized else 0.0
        return self.bytes_done / self.bytes_total

    def describe(self) -> str:
        """One line: what goes where, and how far."""
        done, total = _mib(self.bytes_done), _mib(self.bytes_total)
        if not self.sized:
            size = "checking what the engine already has"
        elif not self.bytes_total:
            size = "the engine has them all"
        else:
            size = f"{done} / {total} MiB to send"
        return f"{self.folder.name} ({self.param} of {self.kind}): {self.files} files, {size}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def is_engine_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(REF_PREFIXES)


def local_folders(kind: str, params: dict[str, Any], ref_for: Callable[[Path], str | None],
                  ) -> tuple[dict[str, Any], dict[str, Path]]:
    """(params with the engine's own outputs named by ref, {slot: local folder to upload}).

    A slot is the parameter's name, or "name[i]" for item i of a list parameter (several pool folders): each
    folder travels on its own and `with_refs` puts its reference back in its place. `ref_for(folder)` names a
    folder downloaded from this engine's jobs (None for any other). A value that does not exist here is left as
    it is: a path on the engine, typed by the user. A local file is refused: only folders travel (the engine
    resolves an upload reference to a folder).
    """
    spec = job_kinds().get(kind)
    if spec is None:  # unknown to this client: the engine answers with its own clear refusal
        return dict(params), {}
    out, send = dict(params), {}
    for name in spec.path_params:
        value = params.get(name)
        if isinstance(value, list):
            items = list(value)
            for i, item in enumerate(items):
                items[i] = _place(f"{name}[{i}]", item, ref_for, send)
            out[name] = items
        else:
            out[name] = _place(name, value, ref_for, send)
        if name not in params:
            del out[name]
    return out, send


def _place(slot: str, value: object, ref_for: Callable[[Path], str | None], send: dict[str, Path]) -> object:
    """One path value: kept, replaced by the engine's ref, or noted in `send` under its slot."""
    if not isinstance(value, str) or not value or is_engine_ref(value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        return value
    ref = ref_for(path)
    if ref is not None:
        return ref
    if not path.is_dir():
        raise DefectScopeError(
            f"params.{slot}: {value} is a file on this computer; a remote engine is sent folders only "
            "(put it in a folder of its own, or give a path on the engine)")
    send[slot] = path.resolve()
    return value


def with_refs(params: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
    """The params with each uploaded slot ("name" or "name[i]") replaced by its "upload:..." reference."""
    out = {k: list(v) if isinstance(v, list) else v for k, v in params.items()}
    for slot, ref in refs.items():
        name, _, index = slot.partition("[")
        if index:
            out[name][int(index.rstrip("]"))] = ref
        else:
            out[name] = ref
    return out


def count_files(folder: Path) -> int:
    return sum(len(files) for _root, _dirs, files in os.walk(folder))


def send_folder(client: EngineClient, upload: Upload, progress: Callable[[int, int], None]) -> str:
    """Runs on a pool thread: the folder to the engine; its "upload:<id>/<name>" reference. Raises when
    cancelled (nothing half-sent is visible on the engine: an upload is committed whole or not at all)."""
    if upload.cancel.is_set():
        raise _cancelled(upload)
    try:
        return client.upload_folder(upload.folder, progress=progress, cancel=upload.cancel)  # "upload:<id>/<folder name>"
    except DefectScopeError:
        if upload.cancel.is_set():
            raise _cancelled(upload) from None
        raise


def _cancelled(upload: Upload) -> DefectScopeError:
    return DefectScopeError(f"upload of {upload.folder} cancelled: nothing was submitted")
