"""Jobs and their state in SQLite (WAL), so a crash of the engine never loses a job's record."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT,
    result TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    placement TEXT,
    refs TEXT
)
"""
# Columns added after the first release: an older engine's database gains them at start-up.
_ADDED_COLUMNS = {"refs": "TEXT"}


@dataclass
class JobRecord:
    id: str
    kind: str
    params: dict[str, Any]
    state: str
    progress: float
    message: str
    error: str | None
    result: dict[str, Any] | None
    created: float
    started: float | None
    finished: float | None
    placement: str | None  # where it runs: "running on GPU 0 (...)", or the CPU fallback note
    # Path parameters given as artifact references (param -> "job:<id>/<name>"); `params` holds their folders.
    refs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JobStore:
    """Thread-safe job table; one connection per store, serialised by a lock (SQLite writes are serial anyway)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, sql_type in _ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {sql_type}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def new_id(self) -> str:
        """An id no job has yet: the engine places a job's outputs under it before the job is recorded."""
        while True:
            job_id = uuid.uuid4().hex[:12]
            if self.get(job_id) is None:
                return job_id

    def create(
        self, kind: str, params: dict[str, Any], refs: dict[str, str] | None = None, job_id: str | None = None
    ) -> JobRecord:
        job_id = job_id or self.new_id()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, params, state, created, refs) VALUES (?, ?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(params), time.time(), json.dumps(refs or {})),
            )
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY created").fetchall()
        return [_record(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        for key in ("params", "result", "refs"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def fail_interrupted(self, reason: str) -> list[str]:
        """At start-up: jobs left queued or running by a previous engine are failed, never left 'running'."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            self._db.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished = ? WHERE state IN ('queued', 'running')",
                (reason, time.time()),
            )
        return [r[0] for r in rows]

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# Named, not "*": a migrated database has its added columns last, whatever order the schema lists them in.
_COLUMNS = "id, kind, params, state, progress, message, error, result, created, started, finished, placement, refs"


def _record(row: tuple) -> JobRecord:
    (job_id, kind, params, state, progress, message, error, result, created, started, finished, placement,
     refs) = row
    return JobRecord(
        job_id, kind, json.loads(params), state, progress, message, error,
        json.loads(result) if result else None, created, started, finished, placement,
        json.loads(refs) if refs else {},
    )
