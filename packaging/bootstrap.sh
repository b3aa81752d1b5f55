#!/usr/bin/env bash
# DefectScope set-up and entry point for a fresh clone.
#   bash packaging/bootstrap.sh demo   # set up, then run the main job on the embedded demo dataset
#   bash packaging/bootstrap.sh test   # set up, then run the test suite
#   bash packaging/bootstrap.sh setup  # set up only
# Set-up is idempotent: a stamp of pyproject.toml skips the pip step when nothing changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
mode="${1:-demo}"
shift || true

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
  echo "DefectScope needs Python 3.10-3.12 (found: ${PYTHON:-none}). Install python3.11 and retry." >&2
  exit 2
fi

# Debian packages Qt (offscreen and xcb), OpenGL under Xvfb and open3d need at run time.
DEB_PACKAGES="libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 \
libdbus-1-3 libglib2.0-0 libusb-1.0-0 xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 \
libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-image0"

install_system_packages() {
  command -v dpkg-query >/dev/null 2>&1 || return 0  # not Debian/Ubuntu: nothing we can check
  local missing=""
  for pkg in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = "0" ]; then
    echo "==> installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "DefectScope needs these Debian packages; install them as root, then rerun:" >&2
    echo "  sudo apt-get install$missing" >&2
    exit 2
  fi
}

setup_venv() {
  local venv="$here/.venv"
  if [ ! -x "$venv/bin/python" ]; then
    echo "==> creating $venv"
    "$PYTHON" -m venv "$venv"
  fi
  local stamp="$venv/.defectscope-stamp"
  local want
  want="$(cat pyproject.toml packaging/bootstrap.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "==> installing Python packages into $venv (first run takes a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned: an open range with no torch installed pulls a multi-GB CUDA build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e ".[train,gui,3d,cluster,packaging,dev]"
  echo "$want" >"$stamp"
}

install_system_packages
setup_venv
export PATH="$here/.venv/bin:$PATH"

case "$mode" in
  setup)
    echo "DefectScope is set up in $here/.venv"
    ;;
  demo)
    # The workbench on the embedded demo dataset: it trains a demo model through its local engine the first
    # time (about a minute on 2 cores), scores every image, and sorts them by score.
    if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ -z "${QT_QPA_PLATFORM:-}" ]; then
      # No screen (a server, CI): run the real window offscreen and save what it shows.
      shot="${DEFECTSCOPE_DEMO_SCREENSHOT:-$here/demo-screenshot.png}"
      echo "no display: running the workbench offscreen until the demo set is scored; screenshot -> $shot"
      QT_QPA_PLATFORM=offscreen exec "$here/.venv/bin/defectscope" gui --demo --screenshot "$shot" \
        --quit-when-scored --quit-after-ms 600000 "$@"
    fi
    exec "$here/.venv/bin/defectscope" gui --demo "$@"
    ;;
  test)
    export QT_QPA_PLATFORM=offscreen
    # Tests never write into the user's home.
    export DEFECTSCOPE_HOME="${DEFECTSCOPE_HOME:-$(mktemp -d)}"
    status=0
    "$here/.venv/bin/ruff" check app engine trainers tests benchmarks || status=$?
    "$here/.venv/bin/lint-imports" --config pyproject.toml || status=$?
    "$here/.venv/bin/python" -m pytest "$@" || status=$?
    exit $status
    ;;
  *)
    echo "usage: bash packaging/bootstrap.sh [demo|test|setup] [args...]" >&2
    exit 2
    ;;
esac
