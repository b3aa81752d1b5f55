"""Job kinds (a registry) and in-process execution; the engine process runs the same jobs in workers.

Importing anything from this package registers the built-in kinds first (engine.jobs.catalog), so a lookup never
depends on which module happened to be imported before.
"""

from engine.jobs import catalog  # noqa: F401  (registers the built-in kinds)
from engine.jobs.registry import JobKind, get_job_kind, job_kinds, register_job_kind, run_job

__all__ = ["JobKind", "get_job_kind", "job_kinds", "register_job_kind", "run_job"]
