"""Issue 13, item 8 and the size rules: what the exported graphs really compute matches what the trainers record.

- the torch twin of the graph's preprocessing equals ONNX Runtime's on raw images (torch's own antialias does not);
- an image_size that is not a multiple of 64 is refused, never rounded; at 320 the memory-bank graph really
  resizes to the 320 that model.json records;
- the unified export's parity check starts from the raw image on both sides, so a different resize fails it;
- a unified resume keeps the saved image_size and refuses a different one before any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.errors import DefectScopeError  # noqa: E402
from trainers.common.onnx_graph import RESIZED, compose_anomaly_model, preprocess_model  # noqa: E402
from trainers.common.torch_preprocess import preprocess_torch  # noqa: E402

TINY = {"image_size": 64, "d_model": 32, "heads": 4, "encoder_layers": 1, "decoder_layers": 1, "ffn_dim": 64}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _torch_antialias(image: np.ndarray, size: int) -> torch.Tensor:
    """The unified trainer's resize before issue 13: torch's own antialiased bilinear."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("policy", ["stretch", "area"])
def test_torch_preprocessing_is_the_graphs_on_raw_images(policy: str) -> None:
    rng = np.random.default_rng(0)
    for size in (64, 128):
        pre = _session(preprocess_model(size, policy))
        for h, w in [(size, size), (3 * size + 5, 2 * size - 7), (size // 2 + 3, size + 1), (40, 5 * size)]:
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            onnx_x = pre.run(None, {"image": img})[0]
            torch_x = preprocess_torch(img, size, policy).numpy()
            assert torch_x.shape == onnx_x.shape, (policy, size, h, w)
            assert np.abs(torch_x - onnx_x).max() < 0.05, (policy, size, h, w)  # grey levels, 0..255
    # Why the twin exists: torch's own antialias treats the border differently, by whole grey levels.
    img = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
    stretch = _session(preprocess_model(64, "stretch")).run(None, {"image": img})[0]
    assert np.abs(_torch_antialias(img, 64).numpy() - stretch).max() > 1.0


@pytest.mark.parametrize("size", [288, 100, 32, 0])
def test_an_image_size_off_the_64_grid_is_refused_not_rounded(size: int) -> None:
    with pytest.raises(DefectScopeError, match=f"image_size must be a multiple of 64.*got {size}"):
        preprocess_model(size, "stretch")
    with pytest.raises(DefectScopeError, match="image_size"):
        preprocess_model(size, "area")
    with pytest.raises(DefectScopeError, match="image_size"):
        preprocess_torch(np.zeros((64, 64, 3), np.uint8), size)


def test_train_anomaly_at_288_is_refused_naming_image_size(tmp_path: Path) -> None:
    from engine.datasets.demo import generate_demo_dataset
    from engine.jobs import run_job

    data = generate_demo_dataset(tmp_path / "demo", categories=["washer"], n_train=2, n_test_good=1,
                                 n_test_defect_per_type=1, image_size=128, seed=0)
    with pytest.raises(DefectScopeError, match=r"image_size.*multiple of 64"):
        run_job("train_anomaly", {"data": str(data), "category": "washer", "out": str(tmp_path / "m"),
                                  "image_size": 288, "device": "cpu"})
    assert not (tmp_path / "m" / "model.onnx").exists()


def _graph_input_shape(model_file: Path, image: np.ndarray) -> tuple[int, ...]:
    """The shape of the tensor the exported model's core really receives for `image`."""
    model = onnx.load(str(model_file))
    model.graph.output.append(onnx.helper.make_tensor_value_info(RESIZED, onnx.TensorProto.FLOAT, None))
    return tuple(_session(model).run([RESIZED], {"image": image})[0].shape)


@pytest.mark.slow
def test_memory_bank_export_at_320_records_the_size_its_graph_uses(tmp_path: Path) -> None:
    from engine.datasets.demo import generate_demo_dataset
    from engine.jobs import run_job

    data = generate_demo_dataset(tmp_path / "demo", categories=["washer"], n_train=4, n_test_good=1,
                                 n_test_defect_per_type=1, image_size=200, seed=0)
    out = tmp_path / "m"
    run_job("train_anomaly", {"data": str(data), "category": "washer", "out": str(out), "image_size": 320,
                              "bank_size": 128, "device": "cpu", "resize": "stretch"})
    meta = json.loads((out / "model.json").read_text())
    assert meta["input_size"] == 320 and meta["resize"] == "stretch"
    img = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    assert _graph_input_shape(out / "model.onnx", img) == (1, 3, 320, 320)


@pytest.fixture(scope="module")
def tiny_unified():
    from trainers.unified.model import UnifiedConfig, UnifiedModel

    torch.manual_seed(0)
    return UnifiedModel(UnifiedConfig(**TINY)).eval()


def test_unified_parity_compares_raw_images_and_fails_on_a_different_resize(tiny_unified, tmp_path: Path) -> None:
    from engine.runtime import AnomalyModel
    from trainers.patchcore.export import PARITY_TOLERANCE
    from trainers.unified.export import NormalisedUnified, ParityError, export_unified, raw_parity

    with pytest.raises(ParityError, match="raw images: max score difference"):
        export_unified(tiny_unified, 5.0, 8.0, tmp_path / "refused", {"kind": "anomaly/unified"}, [],
                       preprocess=_torch_antialias)
    assert not (tmp_path / "refused" / "model.onnx").exists() and not (tmp_path / "refused" / "model.json").exists()

    out = tmp_path / "model"
    meta = export_unified(tiny_unified, 5.0, 8.0, out, {"kind": "anomaly/unified"}, [])
    parity = meta["export"]
    assert parity["parity_max_abs_score_diff"] < PARITY_TOLERANCE
    assert parity["parity_max_abs_map_diff"] < parity["parity_tolerance"]["map"]
    assert json.loads((out / "model.json").read_text())["export"] == parity
    assert _graph_input_shape(out / "model.onnx", np.zeros((90, 150, 3), np.uint8)) == (1, 3, 64, 64)

    # The same check, on images the export did not choose: the real preprocessing agrees, torch's own does not.
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (150, 230), (40, 50)]]
    wrapped = NormalisedUnified(tiny_unified, 5.0, 8.0).eval()
    data = (out / "model.onnx").read_bytes()
    score_diff, map_diff = raw_parity(wrapped, data, 64, images)
    assert score_diff < PARITY_TOLERANCE and map_diff < parity["parity_tolerance"]["map"]
    bad_score, bad_map = raw_parity(wrapped, data, 64, images, _torch_antialias)
    assert bad_score > 10 * PARITY_TOLERANCE and bad_map > parity["parity_tolerance"]["map"]
    # and the engine runtime scores the published model
    pred = AnomalyModel(out, device="cpu").predict(images[1])
    assert np.isfinite(pred.score) and pred.anomaly_map.shape == (150, 230)


def test_compose_refuses_what_it_used_to_round() -> None:
    core = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    with pytest.raises(DefectScopeError, match="got 96"):
        compose_anomaly_model(core, 96, "stretch")


def _saved_state(folder: Path, image_size: int = 64):
    from trainers.unified.fit import UnifiedState
    from trainers.unified.model import Reconstructor, TargetFeatures, UnifiedConfig

    cfg = UnifiedConfig(**{**TINY, "image_size": image_size})
    rec = Reconstructor(TargetFeatures(cfg.backbone).dim, cfg)
    state = UnifiedState(cfg, {k: v.clone() for k, v in rec.state_dict().items()}, products=["washer"],
                         product_stats={"washer": [1.0, 2.0]})
    state.save(folder)
    return state


def test_unified_resume_keeps_the_saved_size_and_refuses_another(tmp_path: Path) -> None:
    from engine.jobs import run_job
    from engine.jobs.kinds_unified import TrainUnifiedParams
    from trainers.unified.fit import UnifiedState, resumed_config
    from trainers.unified.model import UnifiedConfig

    saved = _saved_state(tmp_path / "step1")
    loaded = UnifiedState.load(tmp_path / "step1")
    assert resumed_config(loaded, None) == saved.config  # no size given: the saved one
    assert resumed_config(loaded, UnifiedConfig(**TINY)) == saved.config  # the same size, given again
    assert TrainUnifiedParams(data="d", categories=["x"], out="o").image_size is None
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(DefectScopeError, match=r"step1: image_size 128 differs from the saved 64"):
        run_job("train_unified", {"data": str(data), "categories": ["wood"], "out": str(tmp_path / "step2"),
                                  "resume": str(tmp_path / "step1"), "image_size": 128, "device": "cpu"})
    assert not (tmp_path / "step2").exists()  # refused before any training or writing


@pytest.mark.slow
def test_unified_calibration_scores_are_what_the_exported_graph_computes(tmp_path: Path) -> None:
    """The threshold's center is the held-out image's raw score as training measured it; the exported graph,
    given that raw image, must put it exactly at 0 (a torch-side resize put it off by ~1e-2)."""
    from engine.datasets.demo import generate_demo_dataset
    from engine.datasets.imageio import read_image
    from trainers.unified.export import export_unified
    from trainers.unified.fit import StepConfig, product_images, train_step
    from trainers.unified.model import UnifiedConfig, UnifiedModel

    data = generate_demo_dataset(tmp_path / "demo", categories=["washer"], n_train=6, n_test_good=1,
                                 n_test_defect_per_type=1, image_size=200, seed=4)
    state = train_step(None, data, ["washer"], UnifiedConfig(**TINY), StepConfig(epochs=1, batch_size=4))
    _, held = product_images(data, ["washer"])
    assert len(held["washer"]) == 1  # so the center is that image's own score
    model = UnifiedModel(state.config)
    model.reconstructor.load_state_dict(state.weights)
    center, threshold = state.normalisation()
    export_unified(model, center, threshold, tmp_path / "m", {"kind": "anomaly/unified"}, held["washer"])
    sess = ort.InferenceSession(str(tmp_path / "m" / "model.onnx"), providers=["CPUExecutionProvider"])
    score = float(sess.run(None, {"image": read_image(held["washer"][0])})[0][0])
    assert abs(score) < 1e-4
