"""The promptable-segmenter runtime (engine.runtime.segmenter) against a tiny SAM exported into the format.

torch and segment_anything are used here only to build the model and as the reference for parity; the runtime
itself never imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.errors import ModelError
from engine.runtime import segmenter_format as fmt
from engine.runtime.segmenter import (
    PromptSegmenter,
    image_key,
    mask_to_polygons,
    polygons_to_mask,
)

torch = pytest.importorskip("torch")
if importlib.util.find_spec("segment_anything") is None:
    pytest.skip("segment-anything is not installed", allow_module_level=True)


@pytest.fixture(scope="session")
def tiny_segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny random SAM exported once per session: (model folder, torch SamOnnxModel reference)."""
    from tests.segmenter_fixtures import decoder_reference, export_tiny_segmenter

    out = tmp_path_factory.mktemp("segmenter") / "tiny_sam"
    sam = export_tiny_segmenter(out)
    return out, decoder_reference(sam)


@pytest.fixture
def segmenter(tiny_segmenter):
    seg = PromptSegmenter(tiny_segmenter[0], device="cpu")
    yield seg
    seg.close()


class CountingEncoder:
    """Wraps the encoder session: counts runs, records (thread, start, end), optionally slows each run down.

    The sleep releases the GIL, so a slowed encoder behaves like a long real encode for concurrency tests; it
    honours RunOptions.terminate as ONNX Runtime does (raises). Cancelled runs are recorded in `cancelled`.
    """

    def __init__(self, session, delay: float = 0.0) -> None:
        self.session = session
        self.delay = delay
        self.calls: list[tuple[str, float, float]] = []
        self.cancelled: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def run(self, output_names, feeds, run_options=None):
        start = time.perf_counter()
        name = threading.current_thread().name
        while time.perf_counter() - start < self.delay:
            time.sleep(0.005)
            if run_options is not None and run_options.terminate:
                with self._lock:
                    self.cancelled.append((name, start, time.perf_counter()))
                raise RuntimeError("Exiting due to terminate flag being set to true.")
        out = self.session.run(output_names, feeds, run_options)
        with self._lock:
            self.calls.append((name, start, time.perf_counter()))
        return out

    @property
    def n(self) -> int:
        return len(self.calls)


def _images(n: int, shape=(300, 500), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def _wait_for(cond, timeout: float = 10.0) -> None:
    end = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


def _reference(ref, features: np.ndarray, coords: np.ndarray, labels: list[int], size: tuple[int, int],
               mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """torch SamOnnxModel with coordinates already in the model frame: (masks K x H x W bool, scores K)."""
    mask = np.zeros((1, 1, *(4 * np.array(features.shape[-2:]))), np.float32) if mask_input is None else mask_input
    with torch.inference_mode():
        masks, scores, _ = ref(
            torch.from_numpy(np.array(features)),
            torch.tensor(coords, dtype=torch.float32)[None],
            torch.tensor(labels, dtype=torch.float32)[None],
            torch.from_numpy(mask),
            torch.tensor([0.0 if mask_input is None else 1.0]),
            torch.tensor(size, dtype=torch.float32),
        )
    return (masks[0] > 0).numpy(), scores[0].numpy()


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# ------------------------------------------------------------------------------------------------ geometry
def test_encoder_graph_matches_torch_preprocessing(tiny_segmenter, segmenter):
    """The fixture's encoder follows the format: resize longest side, normalise, pad bottom/right."""
    from tests.segmenter_fixtures import INPUT_SIZE, PIXEL_MEAN, PIXEL_STD

    sam = tiny_segmenter[1].model
    for shape in [(300, 500), (500, 300)]:
        img = _images(1, shape, seed=5)[0]
        emb = segmenter.embed(img)
        h, w = emb.resized_size
        assert (h, w) == (round(shape[0] * INPUT_SIZE / max(shape)), round(shape[1] * INPUT_SIZE / max(shape)))
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = (x - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        x = torch.nn.functional.pad(x, (0, INPUT_SIZE - w, 0, INPUT_SIZE - h))
        with torch.inference_mode():
            ref = sam.image_encoder(x).numpy()
        # antialiased resizes differ slightly between ORT and torch on a noise image: compare statistically
        assert np.corrcoef(emb.features.ravel(), ref.ravel())[0, 1] > 0.999, shape
        assert np.abs(emb.features - ref).mean() < 0.01 * np.abs(ref).mean(), shape


@pytest.mark.parametrize("shape", [(300, 500), (500, 300)])
def test_masks_at_original_size_and_far_right_point_maps_like_torch(tiny_segmenter, segmenter, shape):
    ref = tiny_segmenter[1]
    img = _images(1, shape, seed=1)[0]
    emb = segmenter.embed(img)
    h, w = shape
    assert emb.original_size == shape
    assert emb.scale == pytest.approx(256 / max(h, w))
    point = (w - 8, h // 3)  # far right: wrong scaling here lands far from it
    pred = segmenter.predict(emb, [point], [1])
    assert pred.mask.shape == shape and pred.mask.dtype == bool
    assert pred.all_masks.shape == (4, h, w) and pred.all_scores.shape == (4,)
    assert pred.low_res_logits.shape == (1, 1, 64, 64)

    s = 256 / max(h, w)
    coords = np.array([[point[0] * s, point[1] * s], [0, 0]])
    ref_masks, ref_scores = _reference(ref, emb.features, coords, [1, -1], shape)
    assert np.allclose(pred.all_scores, ref_scores, atol=1e-4)
    for k in range(4):
        assert _agree(pred.all_masks[k], ref_masks[k]) > 0.999

    # the comparison is sensitive to the mapping: scaling x by the width instead of the longest side differs
    wrong = np.array([[point[0] * 256 / w, point[1] * 256 / h], [0, 0]])
    if shape[0] > shape[1]:
        wrong_masks, _ = _reference(ref, emb.features, wrong, [1, -1], shape)
        assert _agree(wrong_masks[pred.index], pred.mask) < 0.99


@pytest.mark.parametrize(
    "prompt",
    [
        {"box": (40, 30, 260, 200)},
        {"box": (260, 200, 40, 30)},  # corners in any order
        {"points": [(120, 90)], "labels": [1], "box": (40, 30, 260, 200)},
        {"points": [(120, 90), (400, 250), (30, 260)], "labels": [1, 0, 0]},
        {"points": [(450, 40)], "labels": [0]},
    ],
    ids=["box", "box-reversed", "point+box", "negative-points", "only-negative"],
)
def test_prompts_match_torch(tiny_segmenter, segmenter, prompt):
    ref = tiny_segmenter[1]
    shape = (300, 500)
    emb = segmenter.embed(_images(1, shape, seed=2)[0])
    pred = segmenter.predict(emb, **prompt)
    s = emb.scale
    coords = [[x * s, y * s] for x, y in prompt.get("points", [])]
    labels = list(prompt.get("labels", []))
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        coords += [[min(x0, x1) * s, min(y0, y1) * s], [max(x0, x1) * s, max(y0, y1) * s]]
        labels += [2, 3]
    else:
        coords += [[0, 0]]
        labels += [-1]
    ref_masks, ref_scores = _reference(ref, emb.features, np.array(coords), labels, shape)
    assert np.allclose(pred.all_scores, ref_scores, atol=1e-4)
    # several prompts (or a box) use the single-mask output, as SamPredictor does
    multimask = len(prompt.get("points", [])) == 1 and "box" not in prompt
    assert pred.index == (1 + int(np.argmax(ref_scores[1:])) if multimask else 0)
    assert _agree(pred.mask, ref_masks[pred.index]) > 0.999


def test_multimask_picks_the_max_iou_mask(segmenter):
    emb = segmenter.embed(_images(1, seed=3)[0])
    for point in [(50, 50), (250, 150), (480, 290)]:
        pred = segmenter.predict(emb, [point])  # labels default to positive
        assert pred.multimask
        assert pred.index == 1 + int(np.argmax(pred.all_scores[1:]))
        assert pred.score == pytest.approx(float(pred.all_scores[1:].max()))
        assert np.array_equal(pred.mask, pred.all_masks[pred.index])
        single = segmenter.predict(emb, [point], multimask=False)
        assert single.index == 0 and single.score == pytest.approx(float(single.all_scores[0]))


def test_mask_input_refines_like_torch(tiny_segmenter, segmenter):
    ref = tiny_segmenter[1]
    emb = segmenter.embed(_images(1, seed=4)[0])
    first = segmenter.predict(emb, [(200, 100)])
    second = segmenter.predict(emb, [(200, 100), (320, 180)], [1, 0], mask_input=first.low_res_logits)
    assert not second.multimask and second.index == 0
    s = emb.scale
    coords = np.array([[200 * s, 100 * s], [320 * s, 180 * s], [0, 0]])
    ref_masks, ref_scores = _reference(ref, emb.features, coords, [1, 0, -1], (300, 500), first.low_res_logits)
    assert np.allclose(second.all_scores, ref_scores, atol=1e-4)
    assert _agree(second.mask, ref_masks[0]) > 0.999
    # a 2-D logit map (as SamPredictor hands them out) is accepted too
    again = segmenter.predict(emb, [(200, 100), (320, 180)], [1, 0], mask_input=first.low_res_logits[0, 0])
    assert np.array_equal(again.mask, second.mask)


def test_grayscale_and_rgba_images_are_accepted(segmenter):
    rgb = _images(1, (120, 90), seed=16)[0]
    gray = rgb[:, :, 0]
    e_gray = segmenter.embed(gray)
    assert np.array_equal(e_gray.features, segmenter.embed(np.repeat(gray[:, :, None], 3, axis=2)).features)
    rgba = np.concatenate([rgb, np.full((120, 90, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(segmenter.embed(rgba).features, segmenter.embed(rgb).features)
    assert segmenter.predict(e_gray, [(80, 10)]).mask.shape == (120, 90)
    with pytest.raises(ValueError, match="uint8"):
        segmenter.embed(rgb.astype(np.float32))


def test_bad_prompts_are_refused(segmenter):
    emb = segmenter.embed(_images(1)[0])
    with pytest.raises(ValueError, match="at least one point"):
        segmenter.predict(emb)
    with pytest.raises(ValueError, match="labels"):
        segmenter.predict(emb, [(1, 1), (2, 2)], [1])
    with pytest.raises(ValueError, match=r"0 \(background\) or 1"):
        segmenter.predict(emb, [(1, 1)], [2])
    with pytest.raises(ValueError, match="mask_input"):
        segmenter.predict(emb, [(1, 1)], mask_input=np.zeros((256, 256), np.float32))


# ---------------------------------------------------------------------------------------------------- cache
def test_cache_hits_and_lru_eviction(tiny_segmenter):
    with PromptSegmenter(tiny_segmenter[0], device="cpu", cache_size=2) as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder)
        a, b, c = _images(3, seed=7)
        ea = seg.embed(a)
        assert seg.embed(a) is ea and enc.n == 1  # same pixels, no key: content hash hits
        assert seg.embed(a.copy()) is ea and enc.n == 1
        assert ea.key == image_key(a) and seg.is_ready(ea.key)
        eb = seg.embed(b, key="b")
        assert seg.embed(a) is ea and enc.n == 2  # touch a: b becomes least recently used
        seg.embed(c, key="c")
        assert enc.n == 3
        assert seg.cached_keys() == [ea.key, "c"]
        assert not seg.is_ready("b")
        assert seg.embed(b, key="b") is not eb and enc.n == 4  # evicted: encoded again
        assert not ea.features.flags.writeable  # shared through the cache: callers cannot corrupt it


def test_concurrent_embeds_of_one_image_encode_once(tiny_segmenter):
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder, delay=0.2)
        img = _images(1, seed=8)[0]
        results = []
        threads = [threading.Thread(target=lambda: results.append(seg.embed(img, "k"))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert enc.n == 1 and len(results) == 4 and all(r is results[0] for r in results)


# ------------------------------------------------------------------------------------------------- prefetch
def test_prefetch_returns_at_once_and_fills_the_cache(tiny_segmenter, tmp_path):
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder, delay=0.1)
        imgs = _images(3, seed=9)
        paths = []
        for i, img in enumerate(imgs):
            p = tmp_path / f"img{i}.png"
            cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            paths.append(p)
        t0 = time.perf_counter()
        seg.prefetch([*paths[:2], imgs[2]], keys=None)
        assert time.perf_counter() - t0 < 0.1
        assert not seg.is_ready(str(paths[0]))
        _wait_for(lambda: all(seg.is_ready(k) for k in (str(paths[0]), str(paths[1]), image_key(imgs[2]))))
        assert enc.n == 3
        assert all(name.startswith("segmenter-prefetch") for name, _, _ in enc.calls)
        # the foreground finds them: by path, by key, by content
        seg.embed_path(paths[0])
        e1 = seg.embed(imgs[1], key=str(paths[1]))
        seg.embed(imgs[2])
        assert enc.n == 3
        assert e1.original_size == (300, 500)
        # already cached: a second prefetch does not encode again
        seg.prefetch(paths[:2])
        seg.prefetch([])  # and lets the worker drain
        time.sleep(0.1)
        assert enc.n == 3


def test_foreground_embed_does_not_wait_behind_prefetch_queue(tiny_segmenter):
    delay = 0.3
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder, delay=delay)
        seg.prefetch(_images(5, seed=10), keys=[f"q{i}" for i in range(5)])  # ~1.5 s of work queued
        _wait_for(lambda: seg._prefetch_run is not None)  # the first prefetch is encoding now
        t0 = time.perf_counter()
        seg.embed(_images(1, seed=11)[0], key="fg")
        t_fg = time.perf_counter() - t0
        assert t_fg < 1.5 * delay, f"foreground embed took {t_fg:.2f}s behind a {5 * delay:.1f}s prefetch queue"
        # the running prefetch was cancelled at once, and none ran while the foreground encoded
        fg = next(c for c in enc.calls if c[0] == threading.current_thread().name)
        assert len(enc.cancelled) == 1 and enc.cancelled[0][2] - t0 < 0.1
        assert all(start >= fg[2] for name, start, _ in enc.calls if name != fg[0])
        _wait_for(lambda: all(seg.is_ready(f"q{i}") for i in range(5)))  # the cancelled one is redone
        assert enc.n == 6


def test_cancelling_uses_the_onnxruntime_terminate_flag(tiny_segmenter):
    """The cancellation relies on ORT refusing a run whose RunOptions.terminate is set."""
    import onnxruntime as ort

    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        options = ort.RunOptions()
        options.terminate = True
        with pytest.raises(Exception, match="terminate"):
            seg._encode(_images(1)[0], "k", options)


def test_foreground_waits_for_the_prefetch_of_the_same_image(tiny_segmenter):
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder, delay=0.3)
        img = _images(1, seed=12)[0]
        seg.prefetch([img], keys=["same"])
        _wait_for(lambda: "same" in seg._in_flight)
        emb = seg.embed(img, key="same")
        assert enc.n == 1 and seg.is_ready("same") and emb.key == "same"


def test_a_new_prefetch_replaces_the_stale_queue(tiny_segmenter):
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        enc = seg._encoder = CountingEncoder(seg._encoder, delay=0.2)
        imgs = _images(5, seed=13)
        seg.prefetch(imgs[:4], keys=["a", "b", "c", "d"])
        _wait_for(lambda: "a" in seg._in_flight)
        seg.prefetch(imgs[4:], keys=["e"])  # the user moved on: b, c, d are no longer wanted
        _wait_for(lambda: seg.is_ready("e"))
        time.sleep(0.05)
        assert enc.n == 2 and seg.is_ready("a")
        assert not any(seg.is_ready(k) for k in "bcd")


def test_failed_prefetch_is_logged_and_embed_still_works(tiny_segmenter, tmp_path, caplog):
    with PromptSegmenter(tiny_segmenter[0], device="cpu") as seg:
        missing = tmp_path / "missing.png"
        seg.prefetch([missing])
        _wait_for(lambda: "prefetch" in caplog.text)
        assert "missing.png" in caplog.text and not seg.is_ready(str(missing))
        emb = seg.embed(_images(1)[0], key=str(missing))
        assert seg.is_ready(str(missing)) and emb.original_size == (300, 500)


# ------------------------------------------------------------------------------------------------- polygons
def _test_mask() -> np.ndarray:
    m = np.zeros((240, 320), np.uint8)
    cv2.circle(m, (100, 110), 70, 1, -1)
    m[85:135, 75:125] = 0  # a hole
    m[102:118, 92:108] = 1  # an island inside the hole
    cv2.ellipse(m, (250, 120), (50, 28), 35, 0, 360, 1, -1)
    m[200, 150:300] = 1  # a 1-pixel scratch
    m[5, 5] = 1  # a speck
    m[60, 100] = 0  # a pinhole
    return m.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_polygons_round_trip():
    mask = _test_mask()
    exact = mask_to_polygons(mask, fineness=0, min_area=0)
    assert np.array_equal(polygons_to_mask(exact, mask.shape), mask)  # exact inverse at fineness 0
    fine = mask_to_polygons(mask, fineness=0.5)
    coarse = mask_to_polygons(mask, fineness=4)
    assert _iou(polygons_to_mask(fine, mask.shape), mask) > 0.95
    assert sum(map(len, coarse)) < sum(map(len, fine)) < sum(map(len, exact))
    for polys in (exact, fine, coarse):
        assert all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 and p.dtype == np.int32 for p in polys)
    # one ring per region (the hole is cut in, the island inside it is its own polygon), the speck is dropped
    assert len(fine) == 4
    back = polygons_to_mask(fine, mask.shape)
    assert not back[110, 85] and back[110, 100]  # the hole stays empty; the island is filled
    assert not back[5, 5] and back[60, 100]  # speck dropped, pinhole filled
    assert mask_to_polygons(np.zeros((10, 10), bool), 1.0) == []


def test_predicted_mask_round_trip(segmenter):
    emb = segmenter.embed(_images(1, (500, 300), seed=14)[0])
    mask = segmenter.predict(emb, box=(20, 40, 280, 460)).mask
    assert mask.any()
    polys = mask_to_polygons(mask, fineness=0.5)
    assert _iou(polygons_to_mask(polys, mask.shape), mask) > 0.95
    assert sum(map(len, mask_to_polygons(mask, fineness=5))) < sum(map(len, polys))


# ---------------------------------------------------------------------------------------------- broken dirs
def _broken(src: Path, dst: Path, case: str) -> str:
    """A copy of the model folder broken one way; returns the file name the error must name."""
    dst.mkdir()
    for name in (fmt.ENCODER_FILE, fmt.DECODER_FILE, fmt.METADATA_FILE):
        (dst / name).symlink_to(src / name)
    meta = json.loads((src / fmt.METADATA_FILE).read_text())

    def write_meta(**changes):
        (dst / fmt.METADATA_FILE).unlink()
        (dst / fmt.METADATA_FILE).write_text(json.dumps({**meta, **changes}))

    if case == "no-metadata":
        (dst / fmt.METADATA_FILE).unlink()
        return fmt.METADATA_FILE
    if case == "bad-json":
        (dst / fmt.METADATA_FILE).unlink()
        (dst / fmt.METADATA_FILE).write_text("{not json")
        return fmt.METADATA_FILE
    if case == "wrong-format":
        write_meta(format="defectscope-promptseg/99")
        return fmt.METADATA_FILE
    if case == "unknown-family":
        write_meta(family="sam_vit_zz")
        return fmt.METADATA_FILE
    if case == "bad-embedding-shape":
        write_meta(embedding_shape=[256, 16])
        return fmt.METADATA_FILE
    if case == "no-encoder":
        (dst / fmt.ENCODER_FILE).unlink()
        return fmt.ENCODER_FILE
    if case == "garbage-decoder":
        (dst / fmt.DECODER_FILE).unlink()
        (dst / fmt.DECODER_FILE).write_bytes(b"not an onnx model")
        return fmt.DECODER_FILE
    if case == "swapped":
        (dst / fmt.DECODER_FILE).unlink()
        shutil.copy(src / fmt.ENCODER_FILE, dst / fmt.DECODER_FILE)
        return fmt.DECODER_FILE
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["no-metadata", "bad-json", "wrong-format", "unknown-family", "bad-embedding-shape", "no-encoder",
     "garbage-decoder", "swapped"],
)
def test_broken_model_dir_names_the_file(tiny_segmenter, tmp_path, case):
    name = _broken(tiny_segmenter[0], tmp_path / "model", case)
    with pytest.raises(ModelError, match=name):
        PromptSegmenter(tmp_path / "model", device="cpu")


def test_wrong_embedding_shape_in_metadata_is_caught_at_encode(tiny_segmenter, tmp_path):
    dst = tmp_path / "model"
    _broken(tiny_segmenter[0], dst, "no-metadata")
    meta = json.loads((tiny_segmenter[0] / fmt.METADATA_FILE).read_text())
    (dst / fmt.METADATA_FILE).write_text(json.dumps({**meta, "embedding_shape": [128, 16, 16]}))
    with PromptSegmenter(dst, device="cpu") as seg, pytest.raises(ModelError, match=fmt.ENCODER_FILE):
        seg.embed(_images(1)[0])


def test_missing_dir():
    with pytest.raises(ModelError, match="does not exist"):
        PromptSegmenter("/nonexistent/segmenter", device="cpu")


# ---------------------------------------------------------------------------------------------------- timing
def test_decoder_latency_per_click(segmenter, capsys):
    """Printed, not asserted: the decoder cost of one click (tiny encoder, real-width SAM decoder)."""
    lines = []
    for shape in [(300, 500), (1200, 1600), (3000, 4000)]:
        emb = segmenter.embed(_images(1, shape, seed=15)[0])
        segmenter.predict(emb, [(shape[1] // 2, shape[0] // 2)])  # warm-up
        n = 20 if shape[0] < 1000 else 5
        t0 = time.perf_counter()
        for i in range(n):
            segmenter.predict(emb, [(shape[1] // 2 + i, shape[0] // 2)])
        lines.append(f"{shape[0]}x{shape[1]}: {(time.perf_counter() - t0) / n * 1000:.1f} ms/click")
    with capsys.disabled():
        print("\n[segmenter] decoder latency (CPU): " + ", ".join(lines))
