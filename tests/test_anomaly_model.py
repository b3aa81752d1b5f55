"""The memory-bank model end to end: training, ONNX export, parity, calibration, runtime."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.datasets import load_dataset
from engine.datasets.imageio import read_image
from engine.evaluate import evaluate
from engine.runtime import AnomalyModel
from tests.conftest import DEMO_CATEGORY
from trainers.common.onnx_graph import RESIZE_POLICIES, preprocess_model
from trainers.patchcore.coreset import greedy_coreset
from trainers.patchcore.fit import calibrate, split_holdout


def test_metadata_describes_the_model(trained_model):
    meta = json.loads((trained_model / "model.json").read_text())
    for key in ("input_size", "threshold", "category", "backbone", "training", "defectscope_version", "export"):
        assert key in meta, key
    assert meta["category"] == DEMO_CATEGORY
    assert meta["backbone"] == "efficientnet-lite0"
    tr = meta["training"]
    assert all(n <= 2048 for n in tr["bank_sizes"])
    assert tr["n_holdout_images"] >= 1
    assert tr["n_train_images"] + tr["n_holdout_images"] == 30
    assert meta["export"]["parity_max_abs_score_diff"] < 1e-4


def test_onnx_and_torch_agree_on_any_image_shape(trained_model):
    """Rebuild the torch model from the run's state and compare scores and maps on odd shapes."""
    from trainers.patchcore.export import load_torch_model

    meta = json.loads((trained_model / "model.json").read_text())
    model = load_torch_model(trained_model)
    assert [b.bank.shape[0] for b in model.branches] == meta["training"]["bank_sizes"]
    assert sum(meta["training"]["bank_sizes"]) == meta["training"]["bank_size"]
    assert [b.factor for b in model.branches] == meta["scales"]
    runtime = AnomalyModel(trained_model, device="cpu")
    pre = ort.InferenceSession(preprocess_model(meta["input_size"], meta["resize"]).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for h, w in [(300, 97), (64, 500), (192, 192), (517, 333)]:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        pred = runtime.predict(img)
        assert pred.anomaly_map.shape == (h, w)
        x = torch.from_numpy(pre.run(None, {"image": img})[0])
        assert x.shape[-1] % 64 == 0 and x.shape[-2] % 64 == 0
        with torch.inference_mode():
            t_score, t_map = model(x)
        assert abs(pred.score - float(t_score[0])) < 1e-4
        # the ONNX map is the torch map resized to the original image: compare on the model grid
        small = cv2.resize(pred.anomaly_map, (x.shape[-1], x.shape[-2]), interpolation=cv2.INTER_LINEAR)
        assert np.corrcoef(small.ravel(), t_map.numpy().ravel())[0, 1] > 0.99
        assert float(pred.anomaly_map.max()) <= pred.score + 1e-3  # upsampling never exceeds the grid max


def test_model_separates_defects_on_demo_data(trained_model, demo_data):
    result = evaluate(trained_model, demo_data, DEMO_CATEGORY, device="cpu")
    assert result["provider"] == "CPUExecutionProvider"
    assert result["image_auroc"] > 0.85, result
    assert result["pixel_auroc"] > 0.85, result
    assert result["aupro"] is not None and result["aupro"] > 0.4, result
    assert result["n_test"] == result["n_good"] + result["n_defective"]
    # calibrated on held-out good images: most good test parts pass at the model's own threshold
    assert result["at_model_threshold"]["false_positive_rate"] <= 0.5


def test_defect_region_scores_higher_than_background(trained_model, demo_data):
    ds = load_dataset(demo_data, category=DEMO_CATEGORY)
    model = AnomalyModel(trained_model, device="cpu")
    from engine.datasets.imageio import read_mask

    inside, outside = [], []
    for s in ds.samples:
        if s.split == "test" and s.mask_path is not None and s.label == "defective":
            img = read_image(s.image_path)
            mask = read_mask(s.mask_path, img.shape[:2])
            amap = model.predict(img).anomaly_map
            inside.append(float(amap[mask].mean()))
            outside.append(float(amap[~mask].mean()))
    assert inside and np.mean(inside) > np.mean(outside) + 0.1


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_preprocessing_policies(policy):
    sess = ort.InferenceSession(preprocess_model(256, policy).SerializeToString(), providers=["CPUExecutionProvider"])
    img = np.zeros((400, 100, 3), dtype=np.uint8)
    img[:, :50] = 200
    out = sess.run(None, {"image": img})[0]
    h, w = out.shape[-2:]
    expected = {"area": (512, 128), "stretch": (256, 256)}[policy]
    assert (h, w) == expected
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255.0 + 1e-3


def test_coreset_covers_every_cluster_and_respects_the_cap():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(20, 32, generator=gen) * 20
    points = torch.cat([c + torch.randn(500, 32, generator=gen) for c in centers])
    idx = greedy_coreset(points, 20, projection_dim=16)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    clusters = {int(i) // 500 for i in idx}
    assert clusters == set(range(20)), "greedy k-center must pick one point from every far-apart cluster"
    assert len(greedy_coreset(points, 50_000)) == len(points)


def test_holdout_split_and_calibration():
    items = list(range(100))
    train, hold = split_holdout(items, 0.1, 40)
    assert len(hold) == 10 and not set(train) & set(hold) and len(train) + len(hold) == 100
    assert split_holdout([1], 0.1, 40) == ([1], [])
    assert len(split_holdout([1, 2], 0.1, 40)[1]) == 1
    center, thr = calibrate([1.0, 1.1, 0.9, 1.05], 3.0)
    assert center == pytest.approx(1.025)
    assert thr >= 1.1  # never rejects a known-good held-out image
    assert calibrate([], 3.0) == (0.0, 1.0)


def test_runtime_reports_the_provider_it_really_uses(trained_model):
    from engine.runtime.session import nvidia_driver_present

    model = AnomalyModel(trained_model, device="cuda")
    assert model.provider == model.session.get_providers()[0]
    if not nvidia_driver_present():
        assert model.provider == "CPUExecutionProvider"  # asked for CUDA, honestly reports CPU


@pytest.mark.slow
def test_real_hazelnut_train_eval_infer_through_the_cli(shared_data, tmp_path):
    """Real photos: train through the CLI, evaluate, and check the figures are those of a working detector."""
    import subprocess
    import sys

    root = shared_data / "hazelnut_toy"
    run = tmp_path / "hz"
    cli = [sys.executable, "-m", "app.cli"]
    train = subprocess.run([*cli, "train", "anomaly", "--data", str(root), "--category", "hazelnut", "--out", str(run)],
                           capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    report = tmp_path / "r.json"
    ev = subprocess.run([*cli, "eval", "--model", str(run), "--data", str(root), "--category", "hazelnut",
                         "--report", str(report)], capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr
    r = json.loads(report.read_text())
    assert r["n_test"] == 23 and r["n_defective"] == 17
    assert r["image_auroc"] >= 0.95, r["image_auroc"]
    assert r["pixel_auroc"] >= 0.9, r["pixel_auroc"]
    assert r["aupro"] >= 0.7, r["aupro"]


def test_two_scale_model_exports_with_parity(demo_data, tmp_path):
    from engine.jobs import run_job
    from trainers.patchcore.export import load_torch_model

    out = tmp_path / "two_scales"
    result = run_job("train_anomaly", {"data": str(demo_data), "category": DEMO_CATEGORY, "out": str(out),
                                       "image_size": 128, "bank_size": 512, "scales": [1, 2], "device": "cpu"})
    meta = result["metadata"]
    assert meta["scales"] == [1, 2] and len(meta["training"]["bank_sizes"]) == 2
    assert meta["export"]["parity_max_abs_score_diff"] < 1e-4
    model = load_torch_model(out)
    runtime = AnomalyModel(out, device="cpu")
    pre = ort.InferenceSession(preprocess_model(128, meta["resize"]).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    img = np.random.default_rng(0).integers(0, 255, (150, 333, 3), dtype=np.uint8)
    pred = runtime.predict(img)
    with torch.inference_mode():
        t_score, _ = model(torch.from_numpy(pre.run(None, {"image": img})[0]))
    assert pred.anomaly_map.shape == (150, 333)
    assert abs(pred.score - float(t_score[0])) < 1e-4
    with pytest.raises(Exception, match="scales"):
        run_job("train_anomaly", {"data": str(demo_data), "out": str(tmp_path / "x"), "scales": [3]})


def test_score_dataset_job_scores_every_image_with_maps_under_browser_keys(trained_model, demo_data, tmp_path):
    """The GUI's "score dataset" job: same scores as the model itself, keyed by path relative to the root."""
    from engine.datasets.keys import sample_key
    from engine.jobs import run_job
    from engine.runtime import AnomalyModel

    seen: list[float] = []
    result = run_job("score_dataset", {"model": str(trained_model), "data": str(demo_data), "category": "washer",
                                       "splits": ["test"], "out": str(tmp_path / "pred"), "device": "cpu"},
                     lambda f, _m: seen.append(f))
    with open(result["scores"]) as fh:
        summary = json.load(fh)
    test = [s for s in load_dataset(demo_data, category="washer").samples if s.split == "test"]
    assert summary["n_scored"] == len(test) == result["n_scored"] and seen[-1] == 1.0
    model = AnomalyModel(trained_model, device="cpu")
    for sample in test[:3] + test[-3:]:
        item = summary["items"][sample_key(demo_data, sample)]
        assert abs(item["score"] - model.predict_path(sample.image_path).score) < 1e-5
        amap = np.load(tmp_path / "pred" / item["map"])
        assert amap.dtype == np.float16 and max(amap.shape) <= 256 and item["label"] == sample.label


def test_parity_check_compares_raw_images_and_can_fail(trained_model):
    """The export's parity check gives torch and ONNX the same raw image, each preprocessing it itself: it passes
    for the real export and fails when one side's preprocessing differs (here: the other resize policy)."""
    from trainers.patchcore.export import PARITY_TOLERANCE, load_torch_model, parity

    meta = json.loads((trained_model / "model.json").read_text())
    model = load_torch_model(trained_model)
    onnx_bytes = (trained_model / "model.onnx").read_bytes()
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(300, 97), (200, 410)]]
    assert parity(model, onnx_bytes, meta["input_size"], images, meta["resize"]) < PARITY_TOLERANCE
    other = next(p for p in RESIZE_POLICIES if p != meta["resize"])
    assert parity(model, onnx_bytes, meta["input_size"], images, other) > 100 * PARITY_TOLERANCE


def test_a_tiny_training_set_trains_with_parity_or_is_refused_clearly(tmp_path):
    """4 good images at 128 px: the export's parity check used to refuse the model (one held-out image put the
    threshold on the center, so float32 noise of the graph became a 0.59 score). 3 images: a clear refusal."""
    from engine.datasets.demo import generate_demo_dataset
    from engine.errors import DatasetError
    from engine.jobs import run_job

    for n, ok in ((4, True), (3, False)):
        data = generate_demo_dataset(tmp_path / f"d{n}", categories=[DEMO_CATEGORY], n_train=n, n_test_good=1,
                                     n_test_defect_per_type=1, image_size=128, seed=0)
        params = {"data": str(data), "category": DEMO_CATEGORY, "out": str(tmp_path / f"m{n}"), "image_size": 128,
                  "device": "cpu"}
        if ok:
            meta = run_job("train_anomaly", params)["metadata"]
            assert meta["training"]["n_holdout_images"] == 2
            assert meta["export"]["parity_max_abs_score_diff"] < 1e-4
        else:
            with pytest.raises(DatasetError, match=r"3 good training images.*at least 4"):
                run_job("train_anomaly", params)
