"""DefectScope's own promptable segmenter: training job, segmenter-format export, parity, quality floor, errors.

One tiny training run (demo washer set, 256 px, a few epochs on 2 CPU cores) is shared by the module.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.datasets.imageio import read_image
from engine.errors import DefectScopeError
from engine.jobs import run_job
from engine.runtime import segmenter_format as fmt
from tests.conftest import DEMO_CATEGORY

pytest.importorskip("torch")

INPUT_SIZE = 256
# Honest floors, observed on the washer demo set (9 training images, 3 held-out defects, seed 0): after 180-450
# steps the box IoU is 0.66-0.92 on training defects and 0.40-0.41 on the held-out ones, where the filled box
# itself scores 0.47 (a dent is a disk, which fills 79% of its box). Nine images are too few to generalise
# beyond that; the real-data comparison with GrabCut is benchmarks/prompt_annotator.py. An untrained decoder
# scores ~0 on both, so these floors still catch a broken training loop, prompt encoding or export.
MIN_TRAIN_IOU = 0.6
MIN_HELD_OUT_IOU = 0.3


@pytest.fixture(scope="module")
def segmenter_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, float]:
    out = tmp_path_factory.mktemp("segmenter") / "washer"
    events: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    run_job(
        "train_segmenter",
        {"data": str(demo_data), "categories": [DEMO_CATEGORY], "out": str(out), "input_size": INPUT_SIZE,
         "epochs": 30, "time_budget_s": 600, "holdout_fraction": 0.25, "device": "cpu", "seed": 0,
         "synthetic_images": 12},
        lambda f, m: events.append((f, m)),
    )
    return out, events, time.perf_counter() - t0


def _sessions(run: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return (ort.InferenceSession(str(run / fmt.ENCODER_FILE), providers=["CPUExecutionProvider"]),
            ort.InferenceSession(str(run / fmt.DECODER_FILE), providers=["CPUExecutionProvider"]))


def _decode(dec: ort.InferenceSession, emb: np.ndarray, shape: tuple[int, int], coords: list, labels: list,
            mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = INPUT_SIZE / max(shape)
    e = emb.shape[-1]
    return tuple(dec.run(None, {
        "image_embeddings": emb,
        "point_coords": (np.asarray(coords, np.float32) * scale)[None],
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, 4 * e, 4 * e), np.float32) if mask_input is None else mask_input,
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array(shape, np.float32),
    }))  # type: ignore[return-value]


def test_export_files_and_metadata(segmenter_run: tuple[Path, list, float]) -> None:
    run, events, seconds = segmenter_run
    for name in (fmt.ENCODER_FILE, fmt.DECODER_FILE, fmt.METADATA_FILE, "torch_state.pt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / fmt.METADATA_FILE).read_text())
    assert meta["format"] == fmt.FORMAT
    assert meta["family"] == "defectscope_effnet" and meta["family"] in fmt.FAMILIES
    assert meta["input_size"] == INPUT_SIZE
    assert meta["embedding_shape"] == [128, INPUT_SIZE // 16, INPUT_SIZE // 16]
    assert meta["pixel_mean"] == [127.0] * 3 and meta["pixel_std"] == [128.0] * 3
    t = meta["training"]
    assert meta["categories"] == [DEMO_CATEGORY]
    assert t["n_train_images"] >= 6 and t["n_holdout_images"] >= 2
    assert not set(t["images_train"]) & set(t["images_holdout"])
    assert t["steps"] > 0 and t["val_box_iou"] is not None and t["train_box_iou"] is not None
    assert t["n_synthetic_defects"] >= 12  # one or more per synthetic image (a stroke may break in two)
    for key, value in meta["parity"].items():
        if key.endswith("_max_abs_diff"):
            assert value < 1e-3, (key, value)
    # progress: monotone, ends at 1.0
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    print(f"training job {seconds:.1f} s, {t['steps']} steps; box IoU train {t['train_box_iou']}, "
          f"held-out {t['val_box_iou']}")


def test_graphs_follow_the_format(segmenter_run: tuple[Path, list, float]) -> None:
    run, _, _ = segmenter_run
    for name in (fmt.ENCODER_FILE, fmt.DECODER_FILE):
        model = onnx.load(str(run / name))
        onnx.checker.check_model(model)
        assert model.ir_version == 9 and any(o.version == 18 for o in model.opset_import if o.domain == "")
    enc, dec = _sessions(run)
    (inp,) = enc.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and len(inp.shape) == 3
    assert [i.name for i in dec.get_inputs()] == ["image_embeddings", "point_coords", "point_labels", "mask_input",
                                                  "has_mask_input", "orig_im_size"]
    img = np.random.default_rng(0).integers(0, 255, (150, 333, 3), np.uint8)  # not square, not a multiple of 32
    (emb,) = enc.run(None, {"image": img})
    assert emb.shape == (1, 128, INPUT_SIZE // 16, INPUT_SIZE // 16)
    masks, ious, low = _decode(dec, emb, (150, 333), [[100, 50], [0, 0]], [1, -1])
    assert masks.shape == (1, fmt.NUM_MASK_OUTPUTS, 150, 333)
    assert ious.shape == (1, fmt.NUM_MASK_OUTPUTS)
    assert low.shape == (1, fmt.NUM_MASK_OUTPUTS, INPUT_SIZE // 4, INPUT_SIZE // 4)


def test_onnx_matches_torch(segmenter_run: tuple[Path, list, float]) -> None:
    import torch

    from trainers.promptseg.export import load_torch_model, preprocess_model
    from trainers.promptseg.model import exportable_decoder

    run, _, _ = segmenter_run
    meta = json.loads((run / fmt.METADATA_FILE).read_text())
    sam, _ = load_torch_model(run)
    enc, dec = _sessions(run)
    pre = ort.InferenceSession(preprocess_model(INPUT_SIZE).SerializeToString(), providers=["CPUExecutionProvider"])
    img = read_image(meta["training"]["images_holdout"][0])
    (emb,) = enc.run(None, {"image": img})
    with torch.no_grad():
        emb_t = sam.image_encoder(torch.from_numpy(pre.run(None, {"image": img})[0])).numpy()
    assert np.abs(emb - emb_t).max() < 1e-3
    h, w = img.shape[:2]
    coords, labels = [[40.0, 50.0], [120.0, 140.0], [80.0, 90.0]], [2, 3, 0]
    masks, ious, low = _decode(dec, emb, (h, w), coords, labels)
    wrapper = exportable_decoder(sam).eval()
    with torch.no_grad():
        masks_t, ious_t, low_t = wrapper(
            torch.from_numpy(emb), torch.tensor(coords)[None] * (INPUT_SIZE / max(h, w)),
            torch.tensor(labels, dtype=torch.float32)[None], torch.zeros(1, 1, INPUT_SIZE // 4, INPUT_SIZE // 4),
            torch.zeros(1), torch.tensor([h, w], dtype=torch.float32))
    assert np.abs(masks - masks_t.numpy()).max() < 1e-3
    assert np.abs(ious - ious_t.numpy()).max() < 1e-4
    assert np.abs(low - low_t.numpy()).max() < 1e-3


def test_box_prompt_segments_held_out_defects(segmenter_run: tuple[Path, list, float]) -> None:
    from trainers.promptseg.data import DataSource, collect_masked_images, image_defects
    from trainers.promptseg.prompts import correction_click, iou

    run, _, _ = segmenter_run
    meta = json.loads((run / fmt.METADATA_FILE).read_text())
    cfg = meta["training"]["config"]
    held_out = set(meta["training"]["images_holdout"])
    root = Path(meta["dataset"][0]["root"])
    items = [m for m in collect_masked_images([DataSource(root)]) if str(m.image_path) in held_out]
    enc, dec = _sessions(run)
    seg_iou, box_iou, clicked_iou = [], [], []
    for item in items:
        img = read_image(item.image_path)
        mask = item.read_mask(img.shape[:2])
        (emb,) = enc.run(None, {"image": img})
        for d in image_defects(mask, cfg["merge_gap_fraction"], cfg["min_defect_area"], INPUT_SIZE):
            x0, y0, x1, y1 = d.box
            masks, _, low = _decode(dec, emb, mask.shape, [[x0, y0], [x1, y1]], [2, 3])
            pred = masks[0, 0] > 0
            seg_iou.append(iou(pred, d.mask))
            filled = np.zeros_like(d.mask)
            filled[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
            box_iou.append(iou(filled, d.mask))
            click = correction_click(pred, d.mask)
            if click is not None:  # one corrective click with the previous logits must not make things worse
                masks, _, _ = _decode(dec, emb, mask.shape, [[x0, y0], [x1, y1], click[:2]], [2, 3, click[2]],
                                      low[:, :1])
                pred = masks[0, 0] > 0
            clicked_iou.append(iou(pred, d.mask))
    assert len(seg_iou) >= 2
    print(f"held-out box-prompt IoU {np.mean(seg_iou):.3f} (filled box {np.mean(box_iou):.3f}, "
          f"after one click {np.mean(clicked_iou):.3f}) over {len(seg_iou)} defects")
    assert meta["training"]["train_box_iou"] > MIN_TRAIN_IOU
    assert np.mean(seg_iou) > MIN_HELD_OUT_IOU
    assert np.mean(clicked_iou) >= np.mean(seg_iou) - 0.05


def _mvtec_without_masks(root: Path, demo_data: Path) -> Path:
    cat = root / "parts"
    src = demo_data / DEMO_CATEGORY
    shutil.copytree(src / "train" / "good", cat / "train" / "good")
    defect = next(p for p in (src / "test").iterdir() if p.name != "good")
    shutil.copytree(defect, cat / "test" / defect.name)
    return root


def test_dataset_without_masks_is_a_clear_error(demo_data: Path, tmp_path: Path) -> None:
    data = _mvtec_without_masks(tmp_path / "nomasks", demo_data)
    with pytest.raises(DefectScopeError, match="no defective images with pixel masks"):
        run_job("train_segmenter", {"data": str(data), "out": str(tmp_path / "out"), "device": "cpu"})
    assert not (tmp_path / "out" / fmt.METADATA_FILE).exists()


def test_bad_parameters_are_clear_errors(demo_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DefectScopeError, match="unknown categories nosuch"):
        run_job("train_segmenter", {"data": str(demo_data), "categories": ["nosuch"], "out": str(tmp_path / "o")})
    with pytest.raises(DefectScopeError, match="multiple of 32"):
        run_job("train_segmenter", {"data": str(demo_data), "out": str(tmp_path / "o"), "input_size": 300})
    with pytest.raises(DefectScopeError, match="does not exist"):
        run_job("train_segmenter", {"data": str(tmp_path / "missing"), "out": str(tmp_path / "o")})


def test_simulated_prompts() -> None:
    from trainers.promptseg.prompts import correction_click, jitter_box, split_defects

    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True
    mask[10:20, 22:30] = True  # 2 px gap: the same defect when the join distance is larger
    mask[70:90, 60:65] = True
    assert len(split_defects(mask, merge_gap=1, min_area=1)) == 3
    defects = split_defects(mask, merge_gap=4, min_area=1)
    assert len(defects) == 2 and defects[0].area == 180 and defects[0].box == (10.0, 10.0, 29.0, 19.0)
    assert split_defects(mask, merge_gap=4, min_area=150)[0].area == 180 and len(
        split_defects(mask, merge_gap=4, min_area=150)) == 1
    # missed defect -> positive click inside it; extra blob -> negative click in it; the larger error wins
    pred = np.zeros_like(mask)
    pred[70:90, 60:65] = True
    x, y, label = correction_click(pred, mask)
    assert label == 1 and mask[int(y), int(x)] and 10 <= y < 20
    pred = mask.copy()
    pred[40:60, 40:60] = True
    x, y, label = correction_click(pred, mask)
    assert label == 0 and 45 <= x <= 55 and 45 <= y <= 55
    assert correction_click(mask, mask) is None
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = jitter_box((10, 10, 29, 19), rng, (100, 100))
        assert 0 <= x0 <= x1 <= 99 and 0 <= y0 <= y1 <= 99


def test_polygon_labels_rasterise_like_masks() -> None:
    from trainers.promptseg.data import MaskedImage

    item = MaskedImage(Path("x.png"), None, Path("."), None, None,
                       polygons=(((2.0, 2.0), (7.0, 2.0), (7.0, 5.0), (2.0, 5.0)),))
    mask = item.read_mask((10, 10))
    assert mask.sum() == 6 * 4 and mask[2, 2] and mask[5, 7] and not mask[6, 7]


def test_synthetic_defects_change_exactly_their_mask() -> None:
    import cv2

    from engine.synthesis.procedural import synthetic_defect

    rng = np.random.default_rng(3)
    base = np.full((120, 160, 3), 128, np.uint8)
    base[:, :, 1] = np.tile(np.arange(160, dtype=np.uint8), (120, 1))  # a gradient: every pixel distinct
    texture = rng.integers(0, 255, (200, 200, 3), np.uint8)
    for _ in range(40):
        img, mask = synthetic_defect(base, texture, rng)
        assert img.shape == base.shape and img.dtype == np.uint8 and mask.shape == base.shape[:2]
        assert mask.sum() >= 4
        changed = np.abs(img.astype(int) - base.astype(int)).max(-1) > 0
        # soft edge: changes stay within one pixel of the mask
        near = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert not (changed & ~near).any()


def test_synthetic_share_of_the_draws() -> None:
    from trainers.promptseg.data import DefectExample, FeatureCache
    from trainers.promptseg.fit import _sampling_weights

    def ex(group: str) -> DefectExample:
        return DefectExample(0, np.zeros((1, 1), np.uint8), (0, 0, 1, 1), np.zeros((1, 2)), np.zeros((1, 2)),
                             (1, 1), group)

    cache = FeatureCache(examples=[ex("a")] * 90 + [ex("b")] * 10 + [ex("synthetic|a")] * 50)
    w = _sampling_weights(cache, "sqrt", 0.3)
    assert w[100:].sum() == pytest.approx(0.3)
    # sqrt balancing: group a (90) gets 3x the mass of group b (10), not 9x
    assert w[:90].sum() / w[90:100].sum() == pytest.approx(3.0)
    with pytest.raises(DefectScopeError, match="balance"):
        _sampling_weights(cache, "cube", 0.3)
