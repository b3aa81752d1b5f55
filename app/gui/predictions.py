"""Scores and anomaly maps of a `score_dataset` job, read from its predictions folder (no Qt)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import DefectScopeError

SCORES_FILE = "scores.json"


@dataclass
class Predictions:
    folder: Path
    threshold: float
    model: str
    data: str = ""  # the dataset root the job scored
    category: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    map_files: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Predictions:
        path = folder / SCORES_FILE
        try:
            summary = json.loads(path.read_text())
            items = summary["items"]
            scores = {k: float(v["score"]) for k, v in items.items()}
            bad = next((k for k, v in scores.items() if not math.isfinite(v)), None)
            if bad is not None:
                raise ValueError(f"score of {bad} is {scores[bad]}")
            return cls(folder, float(summary["threshold"]), str(summary.get("model", "")),
                       str(summary.get("data", "")), summary.get("category"), scores,
                       {k: str(v["map"]) for k, v in items.items()}, dict(summary.get("errors", {})))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DefectScopeError(f"{path}: unreadable predictions ({exc.__class__.__name__}: {exc})") from None

    def is_for(self, root: Path, category: str | None) -> bool:
        """Whether these scores were made on this dataset: keys alone are not enough (MVTec categories share
        names like test/good/000.png)."""
        try:
            same_root = Path(self.data).resolve() == Path(root).resolve()
        except OSError:
            return False
        return same_root and (self.category or None) == (category or None)

    def anomaly_map(self, key: str) -> np.ndarray | None:
        name = self.map_files.get(key)
        if name is None:
            return None
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder.resolve()):
            return None  # a tampered scores.json must not make the GUI read arbitrary files
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError):
            return None
