"""Engine entry point of the import_sam job kind."""

from __future__ import annotations

from pathlib import Path

from engine.jobs.kinds_sam_import import ImportSamParams
from engine.jobs.registry import Progress
from trainers.sam.convert import convert_checkpoint


def import_sam_job(params: ImportSamParams, progress: Progress) -> dict:
    result = convert_checkpoint(Path(params.checkpoint), Path(params.out), params.family, progress)
    return {"segmenter_dir": str(result.out), "family": result.metadata["family"], "metadata": result.metadata}
