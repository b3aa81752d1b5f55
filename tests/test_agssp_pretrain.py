"""Anomaly-guided backbone pretraining (AGBP) and the detector's few-label and frozen-trunk options (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pretraining needs torch")

from trainers.agssp.backbone import PRETRAIN_FILE, PretrainConfig, pretrain_backbone  # noqa: E402
from trainers.detector.export import STATE_FILE  # noqa: E402
from trainers.detector.fit import _load_init, label_subset  # noqa: E402
from trainers.detector.model import Detector, DetectorArch  # noqa: E402


def _pool(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Textured images with one bright blob each, and maps that mark the blob (what a scorer would give)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, maps = [], []
    for i in range(n):
        h, w = 120, 160
        img = rng.normal(120, 14, (h, w, 3)).clip(0, 255).astype(np.uint8)
        x, y = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
        cv2.circle(img, (x, y), 9, (235, 235, 235), -1)
        m = np.zeros((64, 64), np.float32)
        cv2.circle(m, (x * 64 // w, y * 64 // h), 4, 1.0, -1)
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), img)
        images.append(str(path))
        maps.append(cv2.GaussianBlur(m, (0, 0), 1.5))
    return images, np.stack(maps)


def test_label_subset_is_stratified_seeded_and_keeps_every_class() -> None:
    samples = [SimpleNamespace(image_path=Path(f"{c}_{i}.jpg"), labels=np.array([c]))
               for c in range(3) for i in range(40 if c < 2 else 5)]
    picked = label_subset(samples, 0.1, seed=0)
    by_class = np.bincount([int(s.labels[0]) for s in picked], minlength=3)
    assert by_class.tolist() == [4, 4, 1]  # 10% of each class, the rare one still present
    assert [s.image_path for s in label_subset(samples, 0.1, seed=0)] == [s.image_path for s in picked]
    assert {s.image_path for s in label_subset(samples, 0.1, seed=1)} != {s.image_path for s in picked}
    assert label_subset(samples, 1.0, seed=3) == samples


def test_pretraining_learns_the_maps_and_a_detector_starts_from_it(tmp_path: Path) -> None:
    images, maps = _pool(tmp_path / "pool", 12)
    cfg = PretrainConfig(backbone="efficientnet-lite0", image_size=128, epochs=4, batch_size=6, lr=2e-3,
                         distill_weight=1.0, seed=0, device="cpu", time_budget_s=None)
    result = pretrain_backbone([*images, str(tmp_path / "missing.png")], np.concatenate([maps, maps[:1]]),
                               tmp_path / "agbp", cfg, pool="generated")
    meta = json.loads((tmp_path / "agbp" / PRETRAIN_FILE).read_text())
    history = meta["loss_history"]
    assert result["metadata"]["n_images"] == 12 and list(meta["unreadable"]) == [str(tmp_path / "missing.png")]
    assert history[-1]["energy"] < 0.7 * history[0]["energy"], history  # the energy follows the maps

    saved = torch.load(tmp_path / "agbp" / STATE_FILE, weights_only=True)
    assert saved["classes"] == [] and all(k.startswith("trunk.") for k in saved["state"])
    fresh = Detector(DetectorArch("efficientnet-lite0", 2, 128))
    imagenet = {k: v.clone() for k, v in fresh.state_dict().items()}
    changed = [k for k, v in saved["state"].items() if not torch.equal(v, imagenet[k])]
    assert changed and all(k.startswith(("trunk.stage4.", "trunk.stage5.")) for k in changed)  # the stem is ImageNet's

    info = _load_init(fresh, str(tmp_path / "agbp"), ["a", "b"])
    assert info["classes_reused"] is False
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], saved["state"][k]) for k in changed)
    assert info["tensors_loaded"] == len(saved["state"])

    # a state that would load only in part is refused naming its file, never a silent ImageNet start
    from engine.errors import ModelError

    def variant(name: str, state: dict) -> str:
        (tmp_path / name).mkdir()
        torch.save({**saved, "state": state}, tmp_path / name / STATE_FILE)
        return str(tmp_path / name)

    renamed = {f"backbone.{k}": v for k, v in saved["state"].items()}
    partial = {k: v for k, v in saved["state"].items() if not k.startswith("trunk.stage5.")}
    key = next(iter(changed))
    reshaped = {**saved["state"], key: torch.zeros(3)}
    for name, state, why in (("renamed", renamed, "unexpected"), ("partial", partial, "missing"),
                             ("reshaped", reshaped, "do not fit")):
        with pytest.raises(ModelError, match=rf"{name}/{STATE_FILE}: .*{why}"):
            _load_init(Detector(DetectorArch("efficientnet-lite0", 2, 128)), variant(name, state), ["a", "b"])
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match=rf"garbage/{STATE_FILE}: not a detector state"):
        _load_init(fresh, str(tmp_path / "garbage"), ["a", "b"])


def test_pretraining_without_readable_images_is_a_clear_error(tmp_path: Path) -> None:
    from engine.errors import DatasetError

    cfg = PretrainConfig(backbone="efficientnet-lite0", image_size=128, epochs=1, batch_size=2, lr=1e-3,
                         distill_weight=1.0, seed=0, device="cpu", time_budget_s=None)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"bad\.png"):
        pretrain_backbone([str(tmp_path / "bad.png")], np.zeros((1, 64, 64), np.float32), tmp_path / "o", cfg)
    with pytest.raises(DatasetError, match="2 images but 1 maps"):
        pretrain_backbone(["a", "b"], np.zeros((1, 64, 64), np.float32), tmp_path / "o", cfg, pool="P")
