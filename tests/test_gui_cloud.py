"""The point-cloud view rendered for real: OpenGL under Xvfb (Mesa), in a subprocess with the xcb platform."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="GUI extra not installed")
pytest.importorskip("OpenGL", reason="PyOpenGL (GUI extra) not installed")
pytest.importorskip("open3d", reason="the '3d' extra (open3d) is not installed")
pytest.importorskip("torch", reason="the probe trains a small RGB + 3D model")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run not installed (apt-get install xvfb)")
def test_point_cloud_view_renders_colours_and_links_pixels_both_ways_also_in_the_workbench(tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(REPO),
           "DEFECTSCOPE_HOME": str(tmp_path / "home")}

    def probe(*args: str) -> dict:
        out = tmp_path / f"probe{len(args)}.json"
        proc = subprocess.run(
            ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable,
             str(REPO / "tests" / "cloud_view_probe.py"), str(out), *args],
            env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
        assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
        return json.loads(out.read_text())

    r = probe()
    for mode, m in r["modes"].items():
        assert m["std"] > 5 and m["colours"] > 50, (mode, m)  # not a blank frame
    assert r["modes_differ"]
    assert r["select"] and r["marker_visible"]
    assert r["picked"] == [80, 70]  # clicking the highlighted point selects the same image pixel
    assert r["no_point_select"] in (False, "measured")
    # a depth map: relief at a fifth of the side, its kind said; a zero background is not drawn as a plane
    assert r["depth_std"] > 5 and 0.1 < r["depth_relief"] < 0.3, r
    assert "8-bit depth, no background" in r["depth_about"] and "normalised per image" in r["depth_about"]
    assert r["depth_bg_points"] == r["depth_bg_part"]
    assert r["big_points"] == 640_000 and r["big_displayed"] <= r["big_limit"] and r["big_std"] > 5
    # in the workbench: a part with a point cloud gets the 3D dock, and a pixel of the image selects its point
    win = probe(str(tmp_path / "demo3d"))
    assert win["opened"] and win["cloud_shown"], win
    assert win["select"] and win["cloud_selected"] == [48, 40]
    assert win["image_marker"] == [20.5, 30.5]  # a pick in 3D marks the same pixel in the image
    assert win["dock_std"] > 5
    assert win["predictions"] and win["cloud_anomaly"] and win["anomaly_std"] > 5  # scored: coloured by anomaly
