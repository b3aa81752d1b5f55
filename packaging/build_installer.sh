#!/usr/bin/env bash
# Builds dist/defectscope/ (a folder app: `dist/defectscope/defectscope gui`, `... engine serve`) with
# PyInstaller, then smoke-tests the frozen program: CLI, engine + a job run by the frozen worker, GUI screenshot.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash packaging/bootstrap.sh setup >/dev/null
.venv/bin/pyinstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller packaging/defectscope.spec
.venv/bin/python packaging/smoke_frozen.py dist/defectscope/defectscope
