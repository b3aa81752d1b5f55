"""Auto-prompts: anomaly-map blobs become segmenter prompts, and a dataset-wide job proposes masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engine.auto_prompts import prompts_from_map
from tests.conftest import DEMO_CATEGORY


def test_one_prompt_per_blob_strongest_first_with_padded_boxes():
    amap = np.zeros((100, 200), np.float32)
    amap[10:20, 10:30] = 0.7
    amap[15, 25] = 0.9  # the first blob's peak
    amap[60:80, 150:190] = 1.5
    amap[5, 190] = 2.0  # a single hot pixel: noise, below min_area
    prompts = prompts_from_map(amap, threshold=0.5, min_area=16)
    assert len(prompts) == 2
    strong, weak = prompts
    assert strong.peak == pytest.approx(1.5) and weak.peak == pytest.approx(0.9)
    assert weak.point == (25.0, 15.0)
    x0, y0, x1, y1 = weak.box
    assert x0 < 10 and y0 < 10 and x1 > 30 and y1 > 20, "the box encloses the blob with a margin"
    assert all(v >= 0 for v in strong.box) and strong.box[2] <= 199 and strong.box[3] <= 99
    assert prompts_from_map(amap, threshold=3.0) == []


def test_the_anomaly_model_s_blobs_land_on_the_real_defects(trained_model, demo_data):
    from engine.datasets import load_dataset
    from engine.datasets.imageio import read_image, read_mask
    from engine.runtime import AnomalyModel

    model = AnomalyModel(trained_model, device="cpu")
    defects = [s for s in load_dataset(demo_data, category=DEMO_CATEGORY).samples
               if s.label == "defective" and s.mask_path is not None]
    hits = 0
    for s in defects:
        prompts = prompts_from_map(model.predict(read_image(s.image_path)).anomaly_map, model.threshold)
        gt = read_mask(s.mask_path)
        hits += any(gt[int(p.point[1]), int(p.point[0])] or gt[int(p.box[1]):int(p.box[3]) + 1,
                                                              int(p.box[0]):int(p.box[2]) + 1].any()
                    for p in prompts)
    assert hits >= 0.6 * len(defects), f"prompts touched {hits} of {len(defects)} defects"


@pytest.mark.slow
def test_propose_masks_job_writes_proposals_keyed_like_the_browser(trained_model, demo_data, tmp_path_factory):
    pytest.importorskip("torch")
    from engine.jobs import run_job
    from tests.segmenter_fixtures import export_tiny_segmenter

    seg = tmp_path_factory.mktemp("seg") / "tiny"
    export_tiny_segmenter(seg)
    out = tmp_path_factory.mktemp("proposals")
    result = run_job("propose_masks", {"model": str(trained_model), "segmenter": str(seg), "data": str(demo_data),
                                       "category": DEMO_CATEGORY, "splits": ["test"], "out": str(out),
                                       "device": "cpu"})
    summary = json.loads((out / "proposals.json").read_text())
    assert result["n_images"] > 0 and summary["category"] == DEMO_CATEGORY
    for key, proposals in summary["items"].items():
        assert key.startswith(f"{DEMO_CATEGORY}/test/")
        for p in proposals:
            rle = p["rle"]
            m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert m.any() and 0.0 <= p["prompt"]["box"][0] <= p["prompt"]["box"][2]
