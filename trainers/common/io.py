"""File output shared by every trainer.

`atomic_write` is engine.fsutil's atomic write under the name the trainers have always used: one
implementation (temp file, fsync, rename, shared file mode), so a model file is never seen half-written.
"""

from __future__ import annotations

from engine.fsutil import atomic_write_bytes as atomic_write

__all__ = ["atomic_write"]
