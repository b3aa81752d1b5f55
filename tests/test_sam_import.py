"""import_sam: SAM / MobileSAM checkpoints -> the promptable-segmenter format.

No real SAM weights exist on these machines, so the conversions run on small, randomly initialised models of the
same architectures (ViT: width 64, 2 blocks, 256 px; TinyViT: narrow stages at the real 1024 px), saved with the
official key names. The published key layouts are checked on full-size models built on the meta device (no memory)
and on a full-size, randomly initialised MobileSAM (TinyViT-5M).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="train extra not installed")

from engine.checksums import sha256_file  # noqa: E402
from engine.errors import DefectScopeError, ModelError  # noqa: E402
from engine.jobs import run_job  # noqa: E402
from engine.runtime import segmenter_format as fmt  # noqa: E402
from engine.runtime.session import create_session  # noqa: E402
from trainers.sam.checkpoint import (  # noqa: E402
    SamArchitecture,
    ViTConfig,
    build_sam,
    detect_family,
    infer_architecture,
    load_sam,
    official_architecture,
)
from trainers.sam.export import (  # noqa: E402
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    export_encoder,
    parity_failures,
    preprocess_nodes,
    preprocess_torch,
)
from trainers.sam.tiny_vit import TinyViT, TinyViTConfig, attention_bias_index  # noqa: E402

SMALL_VIT = SamArchitecture(
    "sam_vit_b", ViTConfig(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), img_size=256)
)
SMALL_TINY_VIT = SamArchitecture(
    "mobile_sam_vit_t",
    TinyViTConfig(embed_dims=(16, 32, 40, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 14, 7),
                  num_classes=10),
)
FAMILIES = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam_vit_t")

# Key names (and two shapes) of the published mobile_sam.pt, as listed by people inspecting that file.
MOBILE_SAM_REAL_KEYS = (
    "image_encoder.patch_embed.seq.0.c.weight",
    "image_encoder.patch_embed.seq.0.bn.num_batches_tracked",
    "image_encoder.patch_embed.seq.2.bn.running_var",
    "image_encoder.layers.0.blocks.1.conv3.bn.running_mean",
    "image_encoder.layers.0.downsample.conv2.c.weight",
    "image_encoder.layers.1.blocks.0.attn.attention_biases",
    "image_encoder.layers.1.blocks.0.attn.qkv.bias",
    "image_encoder.layers.1.blocks.1.mlp.fc2.weight",
    "image_encoder.layers.1.downsample.conv3.bn.weight",
    "image_encoder.layers.2.blocks.5.local_conv.bn.num_batches_tracked",
    "image_encoder.layers.2.downsample.conv1.c.weight",
    "image_encoder.layers.3.blocks.1.attn.proj.weight",
    "image_encoder.layers.3.blocks.1.mlp.norm.bias",
    "image_encoder.norm_head.weight",
    "image_encoder.head.bias",
    "image_encoder.neck.0.weight",
    "image_encoder.neck.1.bias",
    "image_encoder.neck.3.weight",
)
MOBILE_SAM_REAL_SHAPES = {
    "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
    "image_encoder.patch_embed.seq.2.c.weight": (64, 32, 3, 3),
}


def _random_state_dict(arch: SamArchitecture, seed: int) -> dict[str, torch.Tensor]:
    """A state dict with every tensor perturbed: fresh SAM modules leave position tables, attention biases and
    norms at 0 / 1, where a mis-wired weight would go unnoticed."""
    torch.manual_seed(seed)
    sd = build_sam(arch).state_dict()
    gen = torch.Generator().manual_seed(seed)
    for key, t in sd.items():
        if t.is_floating_point():
            noise = 0.05 * torch.randn(t.shape, generator=gen)
            sd[key] = (t.abs() + 0.5 + noise.abs()) if key.endswith("running_var") else t + noise
    return sd


def _convert(tmp_path_factory: pytest.TempPathFactory, arch: SamArchitecture, family: str, seed: int) -> dict:
    root = tmp_path_factory.mktemp(arch.family)
    ckpt = root / f"{arch.family}_random.pth"
    torch.save(_random_state_dict(arch, seed), ckpt)
    progress: list[tuple[float, str]] = []
    result = run_job("import_sam", {"checkpoint": str(ckpt), "family": family, "out": str(root / "segmenter")},
                     lambda f, m: progress.append((f, m)))
    return {"checkpoint": ckpt, "out": root / "segmenter", "result": result, "progress": progress}


@pytest.fixture(scope="module")
def converted_vit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # A width-64 ViT is no published size, so its family must be named (auto refuses to guess).
    return _convert(tmp_path_factory, SMALL_VIT, "sam_vit_b", seed=1)


@pytest.fixture(scope="module")
def converted_tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _convert(tmp_path_factory, SMALL_TINY_VIT, "auto", seed=2)


@pytest.fixture(params=["converted_vit", "converted_tiny_vit"])
def converted(request: pytest.FixtureRequest) -> dict:
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------------------ the job & format
def test_job_writes_the_segmenter_format(converted):
    out: Path = converted["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([fmt.ENCODER_FILE, fmt.DECODER_FILE, fmt.METADATA_FILE])
    assert not [p for p in out.parent.iterdir() if "staging" in p.name]
    meta = json.loads((out / fmt.METADATA_FILE).read_text())
    assert meta == converted["result"]["metadata"]
    assert meta["format"] == fmt.FORMAT and meta["family"] in fmt.FAMILIES
    size = meta["input_size"]
    assert meta["embedding_shape"] == [256, size // 16, size // 16]
    assert meta["pixel_mean"] == [123.675, 116.28, 103.53] and meta["pixel_std"] == [58.395, 57.12, 57.375]
    assert meta["source"] == converted["checkpoint"].name
    assert meta["source_sha256"] == sha256_file(converted["checkpoint"])
    parity = meta["parity"]
    assert set(parity["prompts"]) == {"point", "box", "point+box", "point+mask"}
    assert parity["embeddings_max_abs_diff"] < 1e-3
    assert parity["mask_disagreement"] <= 0.005
    assert 0.001 < parity["prompts"]["box"]["mask_area"] < 0.999  # the masks are not trivially empty or full
    assert meta["export"]["opset"] == 18 and meta["export"]["encoder_external_data"] is None

    for name in (fmt.ENCODER_FILE, fmt.DECODER_FILE):
        model = onnx.load(str(out / name))
        assert model.ir_version == 9
        assert {(o.domain or "ai.onnx"): o.version for o in model.opset_import}["ai.onnx"] == 18
    enc = onnx.load(str(out / fmt.ENCODER_FILE)).graph
    assert [i.name for i in enc.input] == ["image"] and enc.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in enc.output] == ["image_embeddings"]
    dec = onnx.load(str(out / fmt.DECODER_FILE)).graph
    assert [i.name for i in dec.input] == list(DECODER_INPUTS)
    assert [o.name for o in dec.output] == list(DECODER_OUTPUTS)

    fractions = [f for f, _ in converted["progress"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert converted["result"]["segmenter_dir"] == str(out)


def test_auto_detection_through_the_job(converted_vit, converted_tiny_vit):
    assert converted_tiny_vit["result"]["family"] == "mobile_sam_vit_t"  # family "auto"
    assert converted_vit["result"]["family"] == "sam_vit_b"
    assert converted_tiny_vit["result"]["metadata"]["architecture"]["embed_dims"] == [16, 32, 40, 64]
    assert converted_vit["result"]["metadata"]["architecture"]["global_attn_indexes"] == [1]


def _prompts(h: int, w: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    def p(coords: list[list[float]], labels: list[float]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([coords], np.float32), np.array([labels], np.float32)

    box = [[0.2 * w, 0.3 * h], [0.7 * w, 0.8 * h]]
    return {
        "point": p([[0.5 * w, 0.5 * h], [0.0, 0.0]], [1, -1]),  # SAM's padding point when there is no box
        "box": p(box, [2, 3]),
        "point+box": p([[0.4 * w, 0.6 * h], *box], [1, 2, 3]),
    }


def test_onnx_matches_torch_for_point_box_and_both(converted):
    """A portrait image (the exporters' dummies are landscape 1500 x 2250: a decoder that froze that crop would
    fail here), smaller than the input size (upscaling path)."""
    from trainers.sam._segment_anything import SamOnnxModel

    sam, arch = load_sam(converted["checkpoint"], converted["result"]["family"])
    out = converted["out"]
    encoder, _ = create_session(out / fmt.ENCODER_FILE, device="cpu")
    decoder, _ = create_session(out / fmt.DECODER_FILE, device="cpu")
    rng = np.random.default_rng(5)
    h, w = 300, 200
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[60:240, 40:140] = (220, 40, 40)

    (emb_onnx,) = encoder.run(None, {"image": image})
    with torch.inference_mode():
        emb_torch = sam.image_encoder(preprocess_torch(image, arch.input_size)).numpy()
    assert emb_onnx.shape == (1, *arch.embedding_shape)
    assert np.abs(emb_onnx - emb_torch).max() < 1e-3

    reference = SamOnnxModel(sam, return_single_mask=False).eval()
    scale = np.float32(arch.input_size) / np.float32(max(h, w))
    _, eh, ew = arch.embedding_shape
    for name, (coords, labels) in _prompts(h, w).items():
        feed = {
            "image_embeddings": emb_torch, "point_coords": coords * scale, "point_labels": labels,
            "mask_input": np.zeros((1, 1, 4 * eh, 4 * ew), np.float32),
            "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([h, w], np.float32),
        }
        masks_o, iou_o, low_o = decoder.run(None, feed)
        with torch.inference_mode():
            masks_t, iou_t, low_t = (t.numpy() for t in reference(**{k: torch.from_numpy(v) for k, v in feed.items()}))
        assert masks_o.shape == (1, fmt.NUM_MASK_OUTPUTS, h, w), name
        assert np.abs(masks_o - masks_t).max() < 1e-3, name
        assert np.mean((masks_o > 0) != (masks_t > 0)) <= 0.005, name
        assert np.abs(iou_o - iou_t).max() < 1e-4, name
        assert np.abs(low_o - low_t).max() < 1e-3, name


def test_preprocessing_graph_matches_torch():
    """Antialiased shrink, enlarge, extreme aspect ratios: the in-graph resize/normalise/pad equals the torch one
    (ONNX Runtime's antialias matches torch/PIL at the borders only with exclude_outside=1)."""
    from onnx import TensorProto, helper

    size = 128
    nodes, inits = preprocess_nodes(size, "x")
    graph = helper.make_graph(nodes, "pre", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", 3])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session, _ = create_session(model.SerializeToString(), device="cpu")
    rng = np.random.default_rng(0)
    for h, w in [(480, 640), (1000, 37), (50, 70), (128, 128), (3, 500), (3, 768)]:  # (3, 768): h * S / W = 0.5
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (x,) = session.run(None, {"image": image})
        assert np.abs(x - preprocess_torch(image, size).numpy()).max() < 1e-4, (h, w)


# ------------------------------------------------------------------------------------------ family detection
@pytest.mark.parametrize("family", FAMILIES)
def test_auto_detection_and_architecture_of_every_published_family(family):
    """Full-size models built on the meta device: the published key names and shapes, no memory, no weights."""
    path = Path(f"{family}.pth")
    with torch.device("meta"):
        sd = build_sam(official_architecture(family)).state_dict()
    assert detect_family(sd, path, "auto") == family
    assert infer_architecture(sd, family, path) == official_architecture(family)
    assert detect_family(sd, path, family) == family
    wrong = "sam_vit_h" if family != "sam_vit_h" else "sam_vit_b"
    with pytest.raises(DefectScopeError, match=rf"{family}\.pth"):
        detect_family(sd, path, wrong)
    other_kind = "mobile_sam_vit_t" if family != "mobile_sam_vit_t" else "sam_vit_b"  # ViT <-> TinyViT
    with pytest.raises(DefectScopeError, match=r"holds a (SAM ViT|MobileSAM \(TinyViT\)) image encoder"):
        detect_family(sd, path, other_kind)


def test_custom_vit_width_must_be_named():
    with torch.device("meta"):
        sd = build_sam(SMALL_VIT).state_dict()
    with pytest.raises(DefectScopeError, match=r"width 64.*name the family"):
        detect_family(sd, Path("custom.pth"), "auto")
    assert detect_family(sd, Path("custom.pth"), "sam_vit_l") == "sam_vit_l"


def test_non_sam_checkpoints_fail_naming_the_file(tmp_path):
    linear = tmp_path / "linear.pth"
    torch.save(torch.nn.Linear(4, 2).state_dict(), linear)
    with pytest.raises(DefectScopeError, match=rf"{linear}: not a SAM or MobileSAM checkpoint.*image_encoder"):
        run_job("import_sam", {"checkpoint": str(linear), "out": str(tmp_path / "out")})

    garbage = tmp_path / "notes.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DefectScopeError, match=rf"{garbage}: not a readable PyTorch checkpoint"):
        run_job("import_sam", {"checkpoint": str(garbage), "out": str(tmp_path / "out")})

    with torch.device("meta"):
        encoder_only = {k: v for k, v in build_sam(SMALL_VIT).state_dict().items() if k.startswith("image_encoder.")}
    with pytest.raises(DefectScopeError, match="no prompt_encoder"):
        detect_family(encoder_only, Path("encoder_only.pth"))

    with pytest.raises(DefectScopeError, match=rf"{tmp_path / 'missing.pth'}: checkpoint file not found"):
        run_job("import_sam", {"checkpoint": str(tmp_path / "missing.pth"), "out": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


def test_mismatched_tensor_shape_names_the_file(tmp_path):
    sd = _random_state_dict(SMALL_VIT, seed=3)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(DefectScopeError, match=rf"{path}: does not match the sam_vit_b architecture"):
        load_sam(path, "sam_vit_b")


# ------------------------------------------------------------------------------------------ MobileSAM layout
def test_full_size_mobile_sam_key_layout(tmp_path):
    """TinyViT-5M as in MobileSAM: our own state dict reloads with strict=True, read back from a file its
    architecture is recognised, and it carries the published checkpoint's key names and shapes."""
    arch = official_architecture("mobile_sam_vit_t")
    torch.manual_seed(0)
    sam = build_sam(arch)
    sd = sam.state_dict()
    assert set(MOBILE_SAM_REAL_KEYS) <= set(sd)
    for key, shape in MOBILE_SAM_REAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape
    assert not any(k.startswith("image_encoder.layers.3.downsample") for k in sd)
    encoder_params = sum(p.numel() for p in sam.image_encoder.parameters())
    assert 5.7e6 < encoder_params - (320 * 1000 + 1000) < 5.8e6  # "5M" TinyViT + SAM neck, without the unused head

    build_sam(arch).load_state_dict(sd, strict=True)
    path = tmp_path / "mobile_sam.pt"
    torch.save(sd, path)
    loaded, loaded_arch = load_sam(path)  # auto
    assert loaded_arch == arch
    assert torch.equal(loaded.state_dict()["image_encoder.layers.2.blocks.5.attn.attention_biases"],
                       sd["image_encoder.layers.2.blocks.5.attn.attention_biases"])


def test_tiny_vit_geometry_at_a_smaller_input():
    """Full-width TinyViT-5M at 256 px (cheap on a CPU): stage sizes 64/32/16/16, embeddings 256 x 16 x 16."""
    model = TinyViT(TinyViTConfig(img_size=256)).eval()
    with torch.inference_mode():
        assert tuple(model(torch.randn(1, 3, 256, 256)).shape) == (1, 256, 16, 16)


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_index_matches_mobile_sam_enumeration(window):
    """MobileSAM numbers offsets by first appearance over all point pairs; our closed form must agree, or real
    attention_biases would be applied to the wrong offsets."""
    points = list(itertools.product(range(window), range(window)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    expected = torch.tensor(idxs).view(len(points), len(points))
    assert torch.equal(attention_bias_index(window), expected)


# ------------------------------------------------------------------------------------------ large encoders
def test_large_encoders_keep_weights_in_external_data(tmp_path):
    """ViT-H's encoder (2.5 GB) exceeds protobuf's 2 GiB: forced here with a zero limit on the small model."""
    sam = build_sam(SMALL_VIT)
    sam.load_state_dict(_random_state_dict(SMALL_VIT, seed=4))
    path = tmp_path / fmt.ENCODER_FILE
    data = export_encoder(sam.image_encoder, SMALL_VIT, path, external_data_limit=0)
    assert data == "encoder.onnx.data" and (tmp_path / data).stat().st_size > 1_000_000
    assert path.stat().st_size < 500_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    session, _ = create_session(path, device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (200, 320, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = sam.image_encoder(preprocess_torch(image, 256)).numpy()
    assert np.abs(session.run(None, {"image": image})[0] - expected).max() < 1e-3


# ------------------------------------------------------------------------------------------ failure handling
def test_parity_failure_rejects_the_export_and_leaves_nothing(tmp_path, monkeypatch):
    import trainers.sam.convert as convert

    ckpt = tmp_path / "sam.pth"
    torch.save(_random_state_dict(SMALL_VIT, seed=6), ckpt)
    monkeypatch.setattr(convert, "export_encoder", lambda _e, _a, p, _l: p.write_bytes(b"x") and None)
    monkeypatch.setattr(convert, "export_decoder", lambda _s, _a, p: p.write_bytes(b"x"))
    bad = {"embeddings_max_abs_diff": float("nan"),
           "prompts": {"point": {"mask_disagreement": 0.2, "mask_logits_max_abs_diff": 3.0}}}
    monkeypatch.setattr(convert, "check_parity", lambda *_a: bad)
    out = tmp_path / "artifacts" / "segmenter"
    with pytest.raises(ModelError, match=r"sam\.pth: the exported sam_vit_b model disagrees with torch"):
        convert.convert_checkpoint(ckpt, out, "sam_vit_b")
    assert not out.exists()
    assert list((tmp_path / "artifacts").iterdir()) == []  # no staging folder left behind
    assert len(parity_failures(bad)) == 2  # NaN embeddings never pass; 20% of the mask pixels disagree
