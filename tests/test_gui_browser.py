"""The thumbnail browser with real widgets and real image files: async thumbnails, disk cache, corrupt files,
filters, sorting, navigation, and that a 10,000-image dataset stays virtualised."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QStyleOptionViewItem, QToolTip

from app.gui import thumbs
from app.gui.browser import (
    NG,
    OK,
    SORT_SCORE,
    UNREVIEWED,
    UNSURE,
    BrowserModel,
    BrowserWidget,
    IssueRole,
    KeyRole,
    _sample_keys,
)
from app.gui.thumbs import ThumbnailCache, thumb_key
from app.keys import sample_key
from engine.datasets.registry import load_dataset
from engine.datasets.types import DEFECTIVE, GOOD, LoadIssue, Sample

WAIT_MS = 10_000


class CountingCache(ThumbnailCache):
    """Records every path a view asked for, to prove that only painted rows are requested."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.requested: list[str] = []

    def request(self, path: str | Path) -> None:
        self.requested.append(thumb_key(path))
        super().request(path)


@pytest.fixture
def make_cache(tmp_path: Path) -> Iterator[Callable[..., ThumbnailCache]]:
    """Caches are closed at teardown so no pool thread outlives its test."""
    made: list[ThumbnailCache] = []

    def make(cls: type[ThumbnailCache] = ThumbnailCache, **kwargs: object) -> ThumbnailCache:
        kwargs.setdefault("cache_dir", tmp_path / "thumbcache")
        cache = cls(**kwargs)  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def _write_image(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)),
                    np.full_like(xx, int(rng.integers(0, 255)))], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return path


def _write_truncated_png(path: Path) -> Path:
    good = _write_image(path.with_name("tmp_full.png"), 200, 150, 9)
    data = good.read_bytes()
    good.unlink()
    path.write_bytes(data[: len(data) // 2])  # a real PNG header, pixel data cut off mid-stream
    return path


def _wait_thumbs(qtbot, cache: ThumbnailCache, paths: list[Path]) -> None:
    qtbot.waitUntil(lambda: all(cache.get(p) is not None or cache.error(p) for p in paths), timeout=WAIT_MS)


# ---------------------------------------------------------------------------------------------------------------
# Thumbnail cache


def test_thumbnails_arrive_async_and_come_from_disk_the_second_time(qtbot, tmp_path, make_cache):
    paths = [
        _write_image(tmp_path / "img" / "big.jpg", 2400, 1600, 1),  # reduced JPEG decoding path
        _write_image(tmp_path / "img" / "wide.png", 640, 160, 2),
        _write_image(tmp_path / "img" / "small.png", 64, 48, 3),
    ]
    cache = make_cache(size=128)
    ready: list[str] = []
    cache.thumbnail_ready.connect(ready.append)
    for p in paths:
        assert cache.get(p) is None
        cache.request(p)
        cache.request(p)  # deduplicated
    assert len(ready) == 0, "delivery must be asynchronous (queued to the GUI thread)"
    qtbot.waitUntil(lambda: len(ready) == 3, timeout=WAIT_MS)
    assert sorted(ready) == sorted(thumb_key(p) for p in paths)
    assert cache.stats["rendered"] == 3 and cache.stats["disk_hits"] == 0

    big, wide, small = (cache.get(p) for p in paths)
    assert max(big.width(), big.height()) == 128 and big.width() == 128 and big.height() in (85, 86)
    assert (wide.width(), wide.height()) == (128, 32)
    assert (small.width(), small.height()) == (64, 48)  # never upscaled
    on_disk = list((tmp_path / "thumbcache").rglob("*.jpg"))
    assert len(on_disk) == 3
    assert not list((tmp_path / "thumbcache").rglob("*.tmp")), "atomic writes leave no temp files"

    fresh = make_cache(size=128)
    got: list[str] = []
    fresh.thumbnail_ready.connect(got.append)
    for p in paths:
        fresh.request(p)
    qtbot.waitUntil(lambda: len(got) == 3, timeout=WAIT_MS)
    assert fresh.stats["disk_hits"] == 3 and fresh.stats["rendered"] == 0
    assert fresh.get(paths[0]).size() == big.size()

    # An edited file has a new (mtime, size) identity: re-rendered, not served stale.
    _write_image(paths[1], 320, 320, 4)
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    third = make_cache(size=128)
    third.request(paths[1])
    qtbot.waitUntil(lambda: third.get(paths[1]) is not None, timeout=WAIT_MS)
    assert third.stats["rendered"] == 1
    assert third.get(paths[1]).size().width() == 128 and third.get(paths[1]).size().height() == 128


def test_default_cache_dir_is_under_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECTSCOPE_HOME", str(tmp_path / "home"))
    assert thumbs.default_cache_dir() == tmp_path / "home" / "cache" / "thumbs"


def test_corrupt_and_missing_files_fail_with_a_reason(qtbot, tmp_path, make_cache):
    broken = _write_truncated_png(tmp_path / "broken.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.png"
    cache = make_cache()
    failures: dict[str, str] = {}
    cache.failed.connect(lambda key, reason: failures.__setitem__(key, reason))
    for p in (broken, garbage, missing):
        cache.request(p)
    qtbot.waitUntil(lambda: len(failures) == 3, timeout=WAIT_MS)
    assert "truncated" in failures[thumb_key(broken)].lower()
    assert "cannot decode" in failures[thumb_key(garbage)]
    assert failures[thumb_key(missing)] == "file not found"
    assert cache.get(broken) is None and cache.error(broken) == failures[thumb_key(broken)]
    cache.request(broken)  # a known failure is not retried
    qtbot.wait(50)
    assert cache.stats["failed"] == 3


def test_stale_requests_are_dropped_and_newest_rendered_first(qtbot, tmp_path, make_cache, monkeypatch):
    paths = [_write_image(tmp_path / f"{i}.png", 40, 40, i) for i in range(10)]
    started, release = threading.Event(), threading.Event()
    decoded: list[str] = []
    real = thumbs.read_preview

    def slow_preview(path: str | Path, max_side: int = 1024) -> np.ndarray:
        decoded.append(Path(path).name)
        started.set()
        release.wait(WAIT_MS / 1000)  # hold the single worker so the queue can be inspected
        return real(path, max_side=max_side)

    monkeypatch.setattr(thumbs, "read_preview", slow_preview)
    cache = make_cache(threads=1, max_pending=4)
    cache.request(paths[0])
    assert started.wait(WAIT_MS / 1000)
    for p in paths[1:]:  # 9 queued behind a busy worker; the bound keeps the 4 newest (6..9)
        cache.request(p)
    assert cache.stats["dropped"] == 5
    # The user scrolled on: only rows 7 and 9 are still on screen.
    assert cache.retain([paths[7], paths[9]]) == 2
    release.set()
    qtbot.waitUntil(lambda: cache.get(paths[7]) is not None and cache.get(paths[9]) is not None,
                    timeout=WAIT_MS)
    assert cache.wait()
    assert decoded == ["0.png", "9.png", "7.png"]  # newest first; 1..6 and 8 never decoded


def test_memory_lru_is_bounded(qtbot, tmp_path, make_cache):
    paths = [_write_image(tmp_path / f"{i}.png", 30, 30, i) for i in range(3)]
    cache = make_cache(memory_items=2, threads=1)
    for p in paths:
        cache.request(p)
        qtbot.waitUntil(lambda p=p: cache.get(p) is not None, timeout=WAIT_MS)
    assert cache.get(paths[0]) is None and cache.get(paths[1]) is not None and cache.get(paths[2]) is not None


# ---------------------------------------------------------------------------------------------------------------
# Model and filter on the generated demo dataset


@pytest.fixture
def washer(demo_data: Path):
    return load_dataset(demo_data, category="washer")


@pytest.fixture
def browser(qtbot, make_cache, washer) -> BrowserWidget:
    w = BrowserWidget(cache=make_cache(size=96))
    qtbot.addWidget(w)
    w.set_dataset(washer.root, washer.samples, washer.issues)
    return w


def _combo_select(combo, value) -> None:
    i = combo.findData(value)
    assert i >= 0, f"{value!r} not offered"
    combo.setCurrentIndex(i)


def test_keys_match_app_sample_key(tmp_path, washer):
    root = washer.root
    link = tmp_path / "elsewhere.png"
    _write_image(link, 8, 8, 0)
    inside_link = root / "washer" / "link_to_outside.png"
    try:
        os.symlink(link, inside_link)
    except OSError:
        inside_link = None
    try:
        samples = [*washer.samples, Sample(tmp_path / "outside.png"), Sample(root / "washer" / ".." / "x.png")]
        if inside_link is not None:
            samples.append(Sample(inside_link))
        assert _sample_keys(root, samples) == [sample_key(root, s) for s in samples]
    finally:
        if inside_link is not None:
            inside_link.unlink()


def test_filters_give_the_right_counts(qtbot, browser, washer):
    samples = washer.samples
    n = len(samples)
    assert n > 0 and browser.proxy.rowCount() == n
    assert browser.count_label.text() == f"{n} of {n} images"

    _combo_select(browser.label_combo, DEFECTIVE)
    assert browser.proxy.rowCount() == sum(s.label == DEFECTIVE for s in samples)
    defect = next(s.defect_type for s in samples if s.label == DEFECTIVE)
    _combo_select(browser.defect_combo, defect)
    n_defect = sum(s.defect_type == defect for s in samples)
    assert browser.proxy.rowCount() == n_defect
    assert browser.count_label.text() == f"{n_defect} of {n} images"
    _combo_select(browser.split_combo, "train")
    assert browser.proxy.rowCount() == 0  # MVTec train holds only good parts
    browser.split_combo.setCurrentIndex(0)
    browser.defect_combo.setCurrentIndex(0)
    browser.label_combo.setCurrentIndex(0)
    assert browser.proxy.rowCount() == n

    keys = browser.model.keys()
    browser.model.set_verdicts({keys[0]: "OK", keys[1]: NG, keys[2]: NG, keys[3]: UNSURE})
    _combo_select(browser.verdict_combo, NG)
    assert browser.proxy.rowCount() == 2
    browser.model.set_verdict(keys[4], NG)  # a hidden row that now matches appears
    assert browser.proxy.rowCount() == 3
    _combo_select(browser.verdict_combo, UNREVIEWED)
    assert browser.proxy.rowCount() == n - 5
    _combo_select(browser.verdict_combo, OK)
    assert browser.visible_keys() == [keys[0]]
    browser.verdict_combo.setCurrentIndex(0)
    with pytest.raises(ValueError):
        browser.model.set_verdict(keys[0], "maybe")

    scores = {k: i / 10 for i, k in enumerate(keys[:10])}  # 0.0 .. 0.9; the other rows have no score
    browser.model.set_scores(scores)
    assert browser.proxy.rowCount() == n, "no range set: rows without a score still pass"
    browser.score_min.setValue(0.5)
    assert browser.proxy.rowCount() == 5
    browser.score_max.setValue(0.7)
    assert sorted(browser.visible_keys()) == sorted(keys[5:8])
    browser.score_min.set_bound(None)
    assert browser.proxy.rowCount() == 8  # 0.0 .. 0.7; unscored rows stay hidden while a bound is set
    browser.score_max.set_bound(None)
    assert browser.proxy.rowCount() == n

    name = Path(samples[0].image_path).name
    browser.search_edit.setText(name.upper())
    assert browser.proxy.rowCount() == sum(Path(s.image_path).name == name for s in samples)


def test_sort_by_score_and_navigation_follow_filtered_order(qtbot, browser, washer):
    keys = browser.model.keys()
    assert keys == sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in k.split("/")])
    rng = np.random.default_rng(0)
    scores = {k: float(rng.random()) for k in keys[::2]}  # half the rows unscored
    browser.model.set_scores(scores)
    browser.set_sort_mode(SORT_SCORE)
    order = browser.visible_keys()
    scored = [k for k in order if k in scores]
    assert order[: len(scored)] == sorted(scores, key=scores.get, reverse=True)
    assert set(order[len(scored):]) == set(keys) - set(scores), "rows without a score come last"

    _combo_select(browser.label_combo, DEFECTIVE)
    order = browser.visible_keys()
    assert all(browser.model.sample_at(browser.model.row_for_key(k)).label == DEFECTIVE for k in order)
    seen: list[str] = []
    browser.current_changed.connect(seen.append)
    assert browser.current_key() is None
    assert browser.select_next() == order[0]
    assert browser.select_next() == order[1]
    assert browser.select_next() == order[2]
    assert browser.select_previous() == order[1]
    assert seen == [order[0], order[1], order[2], order[1]]
    assert browser.select_key(order[-1])
    assert browser.select_next() == order[-1]  # clamped at the end
    good_key = next(k for k in keys if browser.model.sample_at(browser.model.row_for_key(k)).label == GOOD)
    assert not browser.select_key(good_key), "a filtered-out key cannot be selected"
    assert not browser.select_key("no/such/key.png")

    browser.set_sort_mode("name")
    assert browser.visible_keys() == [k for k in keys if k in set(order)]


# ---------------------------------------------------------------------------------------------------------------
# Corrupt files in a real widget


def test_corrupt_file_gets_a_badge_and_does_not_crash(qtbot, tmp_path, make_cache):
    root = tmp_path / "ds"
    good = _write_image(root / "good" / "a.png", 120, 90, 1)
    broken = _write_truncated_png(root / "good" / "b.png")
    unreadable = root / "good" / "c.png"  # skipped by the reader: only a LoadIssue, no Sample
    unreadable.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    mask_issue = LoadIssue(root / "ground_truth" / "x_mask.png", "mask: cannot decode")
    samples = [Sample(good, label=GOOD), Sample(broken, label=GOOD)]
    issues = [LoadIssue(unreadable, "not a readable image (UnidentifiedImageError)"), mask_issue]

    cache = make_cache()
    w = BrowserWidget(cache=cache)
    qtbot.addWidget(w)
    w.set_dataset(root, samples, issues)
    assert w.model.keys() == ["good/a.png", "good/b.png", "good/c.png"], "the unreadable image is listed; masks not"
    m = w.model
    assert m.issue_at(m.row_for_key("good/c.png")).startswith("not a readable image")
    assert m.issue_at(m.row_for_key("good/b.png")) is None  # not known to be broken until decoded

    w.resize(600, 400)
    w.show()
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: cache.get(good) is not None and cache.error(broken) is not None, timeout=WAIT_MS)
    reason = m.issue_at(m.row_for_key("good/b.png"))
    assert reason and "truncated" in reason.lower()
    idx = w.proxy.index(w.proxy.row_for_key("good/b.png"), 0)
    assert idx.data(IssueRole) == reason
    assert reason in idx.data(Qt.ItemDataRole.ToolTipRole)
    assert w.select_key("good/b.png") and w.current_key() == "good/b.png"
    assert not w.grab().isNull()  # painting the badge and the broken placeholder works

    # Hovering the "!" badge shows the reason alone.
    rect = w.view.visualRect(idx)
    pos = w.delegate.badge_rect(rect).center()
    event = QHelpEvent(QEvent.Type.ToolTip, pos, w.view.viewport().mapToGlobal(pos))
    option = QStyleOptionViewItem()
    option.rect = rect
    assert w.delegate.helpEvent(event, w.view, option, idx)
    assert QToolTip.text() == f"Problem: {reason}"


# ---------------------------------------------------------------------------------------------------------------
# Scale: 10,000 rows stay virtualised


def test_ten_thousand_rows_are_fast_and_only_visible_rows_request_thumbnails(qtbot, tmp_path, make_cache):
    root = tmp_path / "big"
    real = [_write_image(root / "real" / f"r{i}.png", 64, 64, i) for i in range(4)]
    samples = [Sample(real[i], label=GOOD, split="train", defect_type="good") for i in range(4)]
    for i in range(10_000 - len(samples)):  # paths that do not exist: each decode would be a cheap failure
        defective = i % 4 == 0
        samples.append(Sample(root / "test" / ("crack" if defective else "good") / f"{i:05d}.png",
                              split="test", label=DEFECTIVE if defective else GOOD,
                              defect_type="crack" if defective else "good"))
    cache = make_cache(CountingCache)
    w = BrowserWidget(cache=cache)
    qtbot.addWidget(w)

    t0 = time.perf_counter()
    w.set_dataset(root, samples, [])
    _combo_select(w.label_combo, DEFECTIVE)
    n = w.proxy.rowCount()
    elapsed = time.perf_counter() - t0
    assert n == sum(s.label == DEFECTIVE for s in samples)
    assert elapsed < 1.0, f"set_dataset + filter on 10k rows took {elapsed:.2f}s"
    assert cache.requested == [], "nothing is requested before anything is painted"

    w.label_combo.setCurrentIndex(0)
    w.resize(520, 420)
    w.show()
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: len(set(cache.requested)) > 0, timeout=WAIT_MS)
    qtbot.wait(100)  # let the batched layout settle and repaint
    on_screen = set(w.keys_on_screen())
    requested = {Path(p) for p in cache.requested}
    assert on_screen and 0 < len(requested) < 60, f"{len(requested)} rows requested thumbnails for a tiny viewport"
    assert {Path(w.model.sample_at(w.model.row_for_key(k)).image_path).resolve() for k in on_screen} <= {
        p.resolve() for p in requested}
    _wait_thumbs(qtbot, cache, real)
    assert all(cache.get(p) is not None for p in real)

    w.view.scrollToBottom()
    last = w.visible_keys()[-1]
    qtbot.waitUntil(lambda: last in w.keys_on_screen(), timeout=WAIT_MS)
    last_path = thumb_key(w.model.sample_at(w.model.row_for_key(last)).image_path)
    qtbot.waitUntil(lambda: last_path in cache.requested, timeout=WAIT_MS)
    assert len(set(cache.requested)) < 150, "scrolling to the end requests the end, not everything between"


# ---------------------------------------------------------------------------------------------------------------
# What it looks like


def test_screenshot(qtbot, tmp_path, make_cache, washer):
    out_dir = Path(os.environ.get("DEFECTSCOPE_TEST_ARTIFACTS") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = washer.root
    broken = _write_truncated_png(tmp_path / "broken.png")
    samples = [*washer.samples, Sample(broken, split="test", label=DEFECTIVE, defect_type="crack")]
    cache = make_cache(size=128)
    w = BrowserWidget(cache=cache)
    qtbot.addWidget(w)
    w.set_dataset(root, samples, washer.issues)
    keys = w.model.keys()
    rng = np.random.default_rng(3)
    w.model.set_scores({k: float(rng.random()) for k in keys[1:]})
    w.model.set_verdicts({keys[1]: OK, keys[2]: NG, keys[3]: UNSURE})
    _combo_select(w.split_combo, "test")
    w.resize(760, 560)
    w.show()
    qtbot.waitExposed(w)
    assert w.select_key(keys[2]) or w.select_next()
    w.view.scrollToTop()
    painted = [w.model.sample_at(w.model.row_for_key(k)).image_path for k in w.keys_on_screen()]
    _wait_thumbs(qtbot, cache, painted)
    qtbot.wait(50)
    shot = out_dir / "browser.png"
    assert w.grab().save(str(shot))
    assert shot.stat().st_size > 10_000
    # The model's rows are painted from real thumbnails, not placeholders.
    assert all(cache.get(p) is not None for p in painted if Path(p) != broken)
    assert w.view.currentIndex().data(KeyRole) == w.current_key()


@pytest.fixture
def model_only(make_cache) -> BrowserModel:
    return BrowserModel(cache=make_cache())


def test_model_roles_and_lookups(model_only, tmp_path):
    root = tmp_path / "r"
    samples = [Sample(root / "b" / "img10.png", split="test", label=DEFECTIVE, defect_type="scratch"),
               Sample(root / "b" / "img2.png", split="train", label=GOOD, defect_type="good")]
    m = model_only
    m.set_dataset(root, samples, [LoadIssue(root / "b" / "img10.png", "no mask in ground_truth/scratch/")])
    assert m.keys() == ["b/img2.png", "b/img10.png"], "natural order"
    r = m.row_for_key("b/img10.png")
    assert m.key_at(r) == "b/img10.png" and m.sample_at(r) is samples[0]
    assert m.issue_at(r) == "no mask in ground_truth/scratch/"
    assert m.row_for_key("nope") == -1
    m.set_scores({"b/img10.png": 0.8, "b/img2.png": float("nan"), "unknown": 1.0})
    assert m.score_of("b/img10.png") == 0.8 and m.score_of("b/img2.png") is None
    m.set_verdict("b/img2.png", "OK")
    assert m.verdict_of("b/img2.png") == OK
    with pytest.raises(KeyError):
        m.set_verdict("nope", OK)
