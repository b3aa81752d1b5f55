"""Review decisions for one dataset, kept in an append-only SQLite history.

Every call that records a decision commits before it returns, with WAL and synchronous=FULL: a reviewer who clicks
"NG" and then loses power (or whose app is killed) still finds the decision on restart. Nothing is ever updated or
deleted in place; the current state of an image is its latest event, and `history` shows who changed what, when.

No Qt here: the CLI, the GUI and the tests share this module.
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io
import json
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engine.fsutil import atomic_write_text
from engine.home import default_data_home

VERDICTS = ("ok", "ng", "unsure")
CSV_COLUMNS = ("key", "verdict", "note", "reviewer", "decided_at", "score", "threshold")

# PRAGMA application_id marks the file as ours ("DSRV"), so a stray SQLite file of another program at the path is
# refused instead of having our table added to it.
_APPLICATION_ID = 0x44535256
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT NOT NULL,
    verdict    TEXT CHECK (verdict IS NULL OR verdict IN ('ok', 'ng', 'unsure')),
    note       TEXT,
    reviewer   TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    score      REAL,
    threshold  REAL
);
CREATE INDEX IF NOT EXISTS decisions_by_key ON decisions (key, id);
"""

_COLUMNS = "key, verdict, note, reviewer, decided_at, score, threshold"


class ReviewStoreError(Exception):
    """The review database cannot be used (not a database, corrupt, another program's file, newer schema)."""


@dataclass(frozen=True)
class Decision:
    """One event of an image's review history (verdict None: the verdict was cleared)."""

    key: str
    verdict: str | None
    note: str | None
    reviewer: str
    decided_at: str  # UTC, ISO 8601 with milliseconds
    score: float | None = None
    threshold: float | None = None


def store_for_dataset(dataset_root: Path) -> Path:
    """Where the review database of a dataset lives: <data home>/reviews/<sha1 of the resolved root>[:16].sqlite.

    Outside the dataset on purpose: datasets are often on read-only shares or under version control. A sidecar
    <hash>.json names the dataset so a human browsing the folder knows which file belongs to what.
    """
    root = Path(dataset_root).expanduser().resolve()
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]
    folder = default_data_home() / "reviews"
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = folder / f"{digest}.json"
    info = {"dataset_root": str(root), "database": f"{digest}.sqlite"}
    try:
        current = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current != info:
        _write_atomically(sidecar, lambda f: json.dump(info, f, indent=2), encoding="utf-8")
    return folder / f"{digest}.sqlite"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _current_user() -> str:
    # getpass raises in containers / services without a passwd entry; a decision is still worth recording.
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _optional_number(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _write_atomically(path: Path, write, encoding: str) -> None:
    """Render with `write(file)` in memory, then engine.fsutil's atomic write: readers see the old or the new file."""
    buffer = io.StringIO(newline="")  # csv writes its own line endings
    write(buffer)
    atomic_write_text(path, buffer.getvalue(), encoding=encoding)


class ReviewStore:
    """The review decisions of one dataset. Use from one thread (sqlite3's default check); close() when done."""

    def __init__(self, path: Path, reviewer: str | None = None) -> None:
        self.path = Path(path)
        self.reviewer = reviewer or _current_user()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: autocommit, so every INSERT is its own durable transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"{self.path}: cannot open the review database ({exc})") from None
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            # "file is not a database", "database disk image is malformed", ...: never recreate the file, it may
            # hold the only copy of a day of review work.
            raise ReviewStoreError(
                f"{self.path}: not a usable DefectScope review database ({exc}); "
                "move the file away to start a new one"
            ) from None
        except ReviewStoreError:
            self._db.close()
            raise

    def _prepare(self) -> None:
        db = self._db
        # Reading the header first makes a non-SQLite file fail here, before any pragma could write to it.
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
        if has_tables and app_id != _APPLICATION_ID:
            raise ReviewStoreError(
                f"{self.path}: an SQLite database of another program, not a review database"
            )
        if version > _SCHEMA_VERSION:
            raise ReviewStoreError(
                f"{self.path}: written by a newer DefectScope (schema {version}, this one reads {_SCHEMA_VERSION})"
            )
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise ReviewStoreError(f"{self.path}: the review database is damaged ({check})")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL (not WAL's usual NORMAL): fsync the WAL on every commit so the last decision survives a power cut.
        db.execute("PRAGMA synchronous=FULL")
        if not has_tables:
            db.executescript(
                f"BEGIN; {_SCHEMA} PRAGMA application_id={_APPLICATION_ID}; "
                f"PRAGMA user_version={_SCHEMA_VERSION}; COMMIT;"
            )

    # ------------------------------------------------------------------------------------------------ writing

    def set_verdict(
        self,
        key: str,
        verdict: str | None,
        note: str | None = None,
        score: float | None = None,
        threshold: float | None = None,
    ) -> Decision:
        """Record a verdict ("ok", "ng", "unsure", or None to clear it) for an image, committed on return.

        note=None keeps the image's current note (changing a verdict must not lose what the reviewer wrote); use
        set_note to change or clear it. score / threshold: the model's view at decision time, for later audits.
        """
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; expected one of {', '.join(VERDICTS)} or None")
        previous = self._latest_of(self._check_key(key))
        if note is None and previous is not None:
            note = previous.note
        return self._append(
            Decision(
                key=key,
                verdict=verdict,
                note=note or None,
                reviewer=self.reviewer,
                decided_at=_utc_now(),
                score=_optional_number("score", score),
                threshold=_optional_number("threshold", threshold),
            )
        )

    def set_note(self, key: str, note: str | None) -> Decision:
        """Change an image's note (None or "" clears it), keeping its verdict and the score it was made at."""
        previous = self._latest_of(self._check_key(key))
        return self._append(
            Decision(
                key=key,
                verdict=previous.verdict if previous else None,
                note=note or None,
                reviewer=self.reviewer,
                decided_at=_utc_now(),
                score=previous.score if previous else None,
                threshold=previous.threshold if previous else None,
            )
        )

    def _append(self, d: Decision) -> Decision:
        self._db.execute(
            f"INSERT INTO decisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (d.key, d.verdict, d.note, d.reviewer, d.decided_at, d.score, d.threshold),
        )
        return d

    @staticmethod
    def _check_key(key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"an image key must be a non-empty string, got {key!r}")
        return key

    # ------------------------------------------------------------------------------------------------ reading

    def _latest_of(self, key: str) -> Decision | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE key = ? ORDER BY id DESC LIMIT 1", (key,)
        ).fetchone()
        return Decision(*row) if row else None

    def latest(self) -> dict[str, Decision]:
        """The current decision of every reviewed image. Images whose verdict and note were both cleared are
        left out: they are back to "not reviewed" (their history still shows them)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE id IN (SELECT max(id) FROM decisions GROUP BY key) "
            "ORDER BY key"
        ).fetchall()
        decisions = (Decision(*row) for row in rows)
        return {d.key: d for d in decisions if d.verdict is not None or d.note is not None}

    def history(self, key: str) -> list[Decision]:
        """Every event of one image, oldest first (by insertion order, which a wrong clock cannot reorder)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM decisions WHERE key = ? ORDER BY id", (key,)
        ).fetchall()
        return [Decision(*row) for row in rows]

    def export_csv(self, path: Path) -> int:
        """Write one row per reviewed image (its latest decision, sorted by key); returns the number of rows.

        UTF-8 with a BOM so Excel, where these files usually end up, shows non-ASCII notes correctly; the csv
        module quotes notes holding commas, quotes or line breaks. Written atomically: a crash never leaves half
        a file where a previous export was.
        """
        decisions = list(self.latest().values())

        def write(f) -> None:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            for d in decisions:
                out.writerow(
                    [
                        d.key,
                        d.verdict or "",
                        d.note or "",
                        d.reviewer,
                        d.decided_at,
                        "" if d.score is None else repr(d.score),
                        "" if d.threshold is None else repr(d.threshold),
                    ]
                )

        _write_atomically(Path(path), write, encoding="utf-8-sig")
        return len(decisions)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
