"""IUF's mechanisms on small tensors (issue 7, work in progress): projection protects old activations, the
compression loss has real gradients, anchoring pulls back, and the reconstruction model learns."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from trainers.unified.incremental import (  # noqa: E402
    ActivationBases,
    anchoring_loss,
    capture_ffn_inputs,
    compression_loss,
)


def test_gradient_projection_keeps_old_outputs_and_accumulates_over_steps() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 4)
    mix = torch.randn(3, 16)
    old = torch.randn(200, 3) @ mix  # old product's activations live in a 3-d subspace
    acts = capture_ffn_inputs({"ffn": layer}, lambda: layer(old))
    assert acts["ffn"].shape == (200, 16)
    bases = ActivationBases()
    bases.capture(acts, energy=0.9999)
    assert bases.bases["ffn"].shape[1] == 3 and float(bases.weights["ffn"][0]) == 1.0
    before = layer(old).detach()
    x_new = torch.randn(64, 16)
    loss = (layer(x_new) - 1).pow(2).mean()
    loss.backward()
    raw = layer.weight.grad.clone()
    bases.project({"ffn": layer})
    # the strongest old direction gets no gradient at all, the others a damped one
    assert torch.allclose(layer.weight.grad @ bases.bases["ffn"][:, 0], torch.zeros(4), atol=1e-5)
    with torch.no_grad():
        drift_projected = ((layer.weight.grad) @ old.T).norm()
        drift_raw = (raw @ old.T).norm()
    assert drift_projected < 0.6 * drift_raw
    with torch.no_grad():
        layer.weight -= 0.1 * layer.weight.grad
    assert (layer(old) - before).abs().mean() < (old @ (0.1 * raw).T).abs().mean()
    # a second product adds its own directions; the stored state round-trips
    bases.capture({"ffn": torch.randn(100, 2) @ torch.randn(2, 16)}, energy=0.9999)
    assert bases.bases["ffn"].shape[1] == 5
    q = bases.bases["ffn"]
    assert torch.allclose(q.T @ q, torch.eye(5), atol=1e-4)
    again = ActivationBases.from_state(bases.state())
    assert torch.equal(again.bases["ffn"], q)


def test_compression_loss_has_real_gradients() -> None:
    feats = torch.randn(2, 49, 32, requires_grad=True)
    loss = compression_loss(feats, keep=4)
    loss.backward()
    assert loss.item() > 0 and feats.grad is not None and feats.grad.abs().sum() > 0


def test_compression_loss_is_a_share_that_shrinking_cannot_lower_but_descent_does() -> None:
    torch.manual_seed(0)
    feats = torch.randn(2, 49, 32)
    base = compression_loss(feats, keep=4)
    assert 0 < base.item() < 1
    assert compression_loss(feats * 0.01, keep=4).item() == pytest.approx(base.item(), rel=1e-4)
    x = feats.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        compression_loss(x, keep=4).backward()
        opt.step()
    assert compression_loss(x.detach(), keep=4).item() < 0.8 * base.item()  # the tail's share goes down


def test_anchoring_pulls_towards_the_previous_step() -> None:
    model = nn.Linear(4, 4)
    previous = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert anchoring_loss(model, previous).item() == 0.0
    with torch.no_grad():
        model.weight += 1.0
    loss = anchoring_loss(model, previous)
    loss.backward()
    assert loss.item() == pytest.approx(16.0) and (model.weight.grad > 0).all()


@pytest.mark.slow
def test_reconstruction_model_learns_a_product() -> None:
    from trainers.unified.model import UnifiedConfig, UnifiedModel

    torch.manual_seed(0)
    cfg = UnifiedConfig(image_size=64, d_model=64, heads=4, encoder_layers=1, decoder_layers=1, ffn_dim=128)
    model = UnifiedModel(cfg)
    x = torch.rand(2, 3, 64, 64) * 255
    score, amap = model(x)
    assert score.shape == (2,) and amap.shape == (2, 1, 64, 64) and (amap >= 0).all()
    assert len(model.reconstructor.ffn_out_layers()) == 2
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in model.features.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        first = float(model.error_map(x).mean())
    for _ in range(30):
        t = model.tokens(x)
        rec, _ = model.reconstructor(t, jitter=True)
        loss = (rec - t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(model.error_map(x).mean()) < 0.7 * first


@pytest.mark.slow
def test_base_step_then_an_incremental_step_without_old_images(tmp_path) -> None:
    from engine.datasets.demo import generate_demo_dataset
    from engine.errors import DefectScopeError
    from trainers.unified.fit import StepConfig, UnifiedState, evaluate_products, train_step
    from trainers.unified.model import UnifiedConfig

    data = generate_demo_dataset(tmp_path / "demo", categories=["washer", "wood"], n_train=8, n_test_good=3,
                                 n_test_defect_per_type=1, seed=2)
    cfg = UnifiedConfig(image_size=64, d_model=64, heads=4, encoder_layers=1, decoder_layers=1, ffn_dim=128)
    base = train_step(None, data, ["washer"], cfg, StepConfig(epochs=3, batch_size=4, lr=1e-3))
    assert base.products == ["washer"] and set(base.bases.bases) == {"ffn0", "ffn1"}
    base.save(tmp_path / "step1")
    loaded = UnifiedState.load(tmp_path / "step1")
    assert loaded.products == ["washer"] and torch.equal(loaded.bases.bases["ffn0"], base.bases.bases["ffn0"])
    step2 = train_step(loaded, data, ["wood"], cfg, StepConfig(epochs=3, batch_size=4, lr=1e-3, anchor_weight=1.0,
                                                                compression_weight=0.01))
    assert step2.products == ["washer", "wood"] and len(step2.steps) == 2
    # the bases grew with the new product's directions, on top of the old ones
    assert step2.bases.bases["ffn0"].shape[1] >= base.bases.bases["ffn0"].shape[1]
    result = evaluate_products(step2, data)
    assert set(result) == {"washer", "wood"}
    assert all(0.0 <= r["image_auroc"] <= 1.0 for r in result.values())
    with pytest.raises(DefectScopeError, match="already learned: wood"):
        train_step(step2, data, ["wood"], cfg, StepConfig(epochs=1))


@pytest.mark.slow
def test_cli_base_step_then_resume_exports_one_model_for_all_products(tmp_path, capsys) -> None:
    """`train unified --categories` then `--resume --add`: one ONNX model (the memory-bank model's format) that
    the engine runtime scores every product with; the resumed step never opens the first product's images and
    keeps the saved image size (refusing another one)."""
    import sys as _sys

    import numpy as np

    from app.cli import main
    from engine.datasets.demo import generate_demo_dataset
    from engine.datasets.imageio import read_image
    from engine.runtime import AnomalyModel

    data = generate_demo_dataset(tmp_path / "demo", categories=["washer", "wood"], n_train=8, n_test_good=2,
                                 n_test_defect_per_type=1, seed=3)
    assert main(["train", "unified", "--data", str(data), "--categories", "washer", "--out", str(tmp_path / "s1"),
                 "--image-size", "64", "--epochs", "2"]) == 0
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], str):
            opened.append(args[0])

    # a resume with another size is refused before any training; without one it keeps the saved 64
    assert main(["train", "unified", "--data", str(data), "--resume", str(tmp_path / "s1"), "--add", "wood",
                 "--out", str(tmp_path / "s2"), "--image-size", "128", "--epochs", "2"]) == 2
    assert "image_size 128 differs from the saved 64" in capsys.readouterr().err
    assert not (tmp_path / "s2").exists()
    _sys.addaudithook(audit)  # cannot be removed; it only appends to a list
    assert main(["train", "unified", "--data", str(data), "--resume", str(tmp_path / "s1"), "--add", "wood",
                 "--out", str(tmp_path / "s2"), "--epochs", "2"]) == 0
    assert not [p for p in opened if "/washer/" in p]  # no old product's image was read
    assert "products washer, wood" in capsys.readouterr().out
    model = AnomalyModel(tmp_path / "s2", device="cpu")
    assert model.metadata["kind"] == "anomaly/unified" and model.metadata["products"] == ["washer", "wood"]
    assert model.metadata["input_size"] == 64
    assert model.metadata["export"]["parity_max_abs_score_diff"] < 1e-4
    assert model.metadata["export"]["parity_max_abs_map_diff"] < model.metadata["export"]["parity_tolerance"]["map"]
    for cat in ("washer", "wood"):
        img = read_image(next((data / cat / "test" / "good").iterdir()))
        pred = model.predict(img)
        assert np.isfinite(pred.score) and pred.anomaly_map.shape == img.shape[:2]
    assert main(["train", "unified", "--data", str(data), "--out", str(tmp_path / "x")]) == 2  # neither mode
