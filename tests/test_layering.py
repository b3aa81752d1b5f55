"""Layering rules hold: engine/trainers never import Qt; inference never imports torch; app never imports trainers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", "pyproject.toml"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_inference_modules_load_without_torch_or_qt():
    code = (
        "import sys\n"
        "import engine.runtime, engine.evaluate, engine.infer, engine.datasets, engine.metrics, engine.jobs\n"
        "import engine.runtime.multimodal, engine.multimodal_eval, engine.geometry.preprocess\n"
        "import engine.geometry.features, engine.geometry.polygons, engine.fsutil, engine.home\n"
        "import engine.datasets.writers, engine.datasets.demo, engine.datasets.demo3d\n"
        "import app.cli\n"
        "engine.jobs.job_kinds()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'PySide6', 'pyqtgraph', 'trainers'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_engine_and_trainers_source_has_no_qt_import():
    offenders = []
    for pkg in ("engine", "trainers"):
        for path in (REPO / pkg).rglob("*.py"):
            for line in path.read_text().splitlines():
                stripped = line.strip()
                if stripped.startswith(("import ", "from ")) and any(
                    q in stripped.split()[1] for q in ("PySide6", "PyQt", "pyqtgraph", "qtpy")
                ):
                    offenders.append(f"{path}: {stripped}")
    assert not offenders, offenders
