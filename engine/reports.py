"""Evaluation reports: written the same way by every evaluator, and their figures printed the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(result: dict[str, Any], report_path: str | Path | None) -> None:
    """The result as indented JSON at `report_path` (its folder created); nothing when no path is given."""
    if report_path is None:
        return
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def fmt_metric(value: float | None) -> str:
    """A metric with 3 decimals, or n/a when it could not be computed."""
    return "n/a" if value is None else f"{value:.3f}"
