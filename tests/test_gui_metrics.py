"""MetricsView (app.gui.metrics_view) as a real widget, headless: curves, threshold line, summary, messages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QPoint, QPointF, Qt

from app.gui.metrics_view import MetricsView
from app.review.threshold import threshold_impact
from engine.datasets.types import DEFECTIVE, GOOD, UNKNOWN
from engine.metrics import aupro, image_auroc

DEFECT_KINDS = ("scratch", "dent", "stain")


def synthetic_results(seed: int = 0) -> dict:
    """60 good / 30 defective / 5 unlabelled images; defects overlap the good scores a little."""
    rng = np.random.default_rng(seed)
    scores, labels, types, maps, masks = {}, {}, {}, {}, {}
    for i in range(60):
        k = f"test/good/{i:03d}.png"
        scores[k], labels[k], types[k] = float(rng.normal(0.3, 0.1)), GOOD, "good"
        maps[k], masks[k] = rng.random((32, 32)).astype(np.float32) * 0.5, None
    for i in range(30):
        kind = DEFECT_KINDS[i % 3]
        k = f"test/{kind}/{i:03d}.png"
        # "stain" is the hard one: its scores sit on top of the good ones.
        scores[k] = float(rng.normal(0.35 if kind == "stain" else 0.75, 0.12))
        labels[k], types[k] = DEFECTIVE, kind
        mask = np.zeros((32, 32), dtype=np.uint8)
        y, x = rng.integers(4, 24, size=2)
        mask[y : y + 6, x : x + 6] = 255
        amap = rng.random((32, 32)).astype(np.float32) * 0.5
        amap[mask > 0] += 0.4
        maps[k], masks[k] = amap, mask
    for i in range(5):
        k = f"line/{i:03d}.png"
        scores[k], labels[k], types[k] = float(rng.normal(0.5, 0.2)), UNKNOWN, None
    return {"scores": scores, "labels": labels, "defect_types": types, "maps": maps, "masks": masks}


def artifacts_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("DEFECTSCOPE_TEST_ARTIFACTS") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def view(qtbot) -> MetricsView:
    v = MetricsView()
    qtbot.addWidget(v)
    v.resize(1200, 800)
    return v


def test_roc_and_pro_titles_match_engine_metrics(view: MetricsView, qtbot, tmp_path: Path):
    r = synthetic_results()
    with qtbot.waitSignal(view.pro_ready, timeout=10_000):
        view.set_results(**r)
    labelled = [k for k, lab in r["labels"].items() if lab != UNKNOWN]
    expected = image_auroc(
        [r["scores"][k] for k in labelled], [r["labels"][k] == DEFECTIVE for k in labelled]
    )
    assert f"AUROC {expected:.3f}" in view.roc.title()
    assert not view.roc.showing_message and not view.pro.showing_message
    pro_keys = [k for k in r["maps"] if k in labelled]
    expected_pro = aupro([r["maps"][k] for k in pro_keys], [r["masks"][k] for k in pro_keys])
    assert f"{expected_pro:.3f}" in view.pro.title()
    # Recall table: one row per defect type plus the total, stain (hard) recalled worst.
    table = view.recall_table
    rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
    assert set(rows) == {*DEFECT_KINDS, "All defects"}
    assert rows["All defects"].endswith("/ 30")

    view.show()
    qtbot.waitExposed(view)
    shot = artifacts_dir(tmp_path) / "metrics_view.png"
    assert view.grab().save(str(shot))
    assert shot.stat().st_size > 10_000


def test_set_threshold_moves_the_line_without_emitting(view: MetricsView, qtbot):
    r = synthetic_results()
    view.set_results(r["scores"], r["labels"], r["defect_types"])
    with qtbot.assertNotEmitted(view.threshold_changed):
        view.set_threshold(0.5)
    assert view.threshold_line.value() == pytest.approx(0.5)
    expected = threshold_impact(r["scores"], r["labels"], 0.5, previous=0.5)
    assert view.impact == expected
    assert f"{expected.predicted_ng} NG" in view.summary.text()
    assert view.pro.showing_message and "No pixel masks" in view.pro.message.text()


def _line_point(view: MetricsView, x: float) -> QPoint:
    """Widget coordinates of score x at mid-height of the histogram plot."""
    plot = view.histogram.plot
    vb = plot.getPlotItem().getViewBox()
    (_, _), (y0, y1) = vb.viewRange()
    scene = vb.mapViewToScene(QPointF(x, (y0 + y1) / 2))
    return plot.mapFromScene(scene)


def test_dragging_the_line_emits_and_updates_the_summary(view: MetricsView, qtbot):
    r = synthetic_results()
    view.set_results(r["scores"], r["labels"], r["defect_types"])
    view.set_threshold(0.5)
    view.threshold_changed.connect(view.set_threshold)  # an echoing caller must not cause a loop
    view.show()
    qtbot.waitExposed(view)

    viewport = view.histogram.plot.viewport()
    start, end = _line_point(view, 0.5), _line_point(view, 0.62)
    seen: list[float] = []
    view.threshold_changed.connect(seen.append)
    with qtbot.waitSignal(view.threshold_committed, timeout=2000) as committed:
        qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
        for f in np.linspace(0, 1, 6)[1:]:
            qtbot.mouseMove(viewport, QPoint(round(start.x() + f * (end.x() - start.x())), start.y()))
        qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)
    assert seen, "dragging the line emitted nothing"
    t = committed.args[0]
    assert t == pytest.approx(0.62, abs=0.02) and seen[-1] == t == view.threshold()
    expected = threshold_impact(r["scores"], r["labels"], t, previous=0.5)
    assert view.impact == expected
    assert f"Threshold {t:.3f}" in view.summary.text()
    assert f"{expected.flipped} verdicts change vs 0.500" in view.summary.text()
    assert expected.flipped > 0


def test_only_good_images_show_messages_not_errors(view: MetricsView, qtbot, tmp_path: Path):
    rng = np.random.default_rng(1)
    scores = {f"good/{i}.png": float(s) for i, s in enumerate(rng.normal(0.3, 0.1, 40))}
    labels = dict.fromkeys(scores, GOOD)
    maps = {k: rng.random((16, 16)) for k in scores}
    masks = dict.fromkeys(scores)
    with qtbot.waitSignal(view.pro_ready, timeout=10_000):
        view.set_results(scores, labels, dict.fromkeys(scores, "good"), maps, masks)
    assert view.roc.showing_message and "both good and defective" in view.roc.message.text()
    assert view.pro.showing_message
    assert not view.histogram.showing_message  # the threshold still matters: it sets the false-positive rate
    assert view.impact is not None and view.impact.false_positives == 0  # default: just above the worst good
    assert view.recall_table.rowCount() == 0
    view.set_threshold(0.3)
    assert "false positives (of 40 good)" in view.summary.text()
    view.show()
    qtbot.waitExposed(view)
    assert view.grab().save(str(artifacts_dir(tmp_path) / "metrics_view_only_good.png"))


def test_masks_without_defect_pixels_and_bad_results(view: MetricsView, qtbot):
    r = synthetic_results()
    masks = {k: (None if m is None else np.zeros_like(m)) for k, m in r["masks"].items()}
    with qtbot.waitSignal(view.pro_ready, timeout=10_000):
        view.set_results(r["scores"], r["labels"], r["defect_types"], r["maps"], masks)
    assert view.pro.showing_message and "No defect pixels" in view.pro.message.text()
    view.set_results({"a.png": float("nan")}, {}, {})
    assert view.histogram.showing_message and "'a.png'" in view.histogram.message.text()
    view.set_results({}, {}, {})
    assert view.roc.showing_message and view.impact is None
