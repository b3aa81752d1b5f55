"""Job kinds (a registry) and in-process execution; the engine process runs the same jobs in workers."""

from engine.jobs.registry import JobKind, get_job_kind, job_kinds, register_job_kind, run_job

__all__ = ["JobKind", "get_job_kind", "job_kinds", "register_job_kind", "run_job"]
