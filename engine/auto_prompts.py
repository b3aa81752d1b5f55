"""Auto-prompts: the blobs of an anomaly map become box and point prompts for the promptable segmenter.

The anomaly model says *where* something is unusual; the segmenter says *which pixels* belong to it. Each blob
of the map above the threshold gives one prompt (its box, padded, plus its peak as a positive point); the
segmenter turns it into a proposed defect mask that the engineer accepts, edits or rejects. Any scoring model
(engine.runtime.model_format) gives the maps, through the one scoring loop. Torch-free: both models run through
ONNX Runtime.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from engine.datasets import load_dataset
from engine.datasets.keys import sample_key
from engine.errors import DefectScopeError
from engine.fsutil import atomic_write_text
from engine.jobs.kinds_autoprompt import ProposeMasksParams
from engine.jobs.registry import Progress
from engine.runtime.model_format import open_model
from engine.runtime.segmenter import PromptSegmenter
from engine.scoring import Scored, score_samples, select_samples

PROPOSALS_FILE = "proposals.json"


@dataclass(frozen=True)
class AutoPrompt:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    point: tuple[float, float]  # the blob's peak
    peak: float  # the map's value there (normalised: 0.5 = the model's threshold)
    area: int  # blob pixels above the threshold


def prompts_from_map(
    anomaly_map: np.ndarray, threshold: float = 0.5, min_area: int = 16, max_prompts: int = 8, pad: float = 0.15,
) -> list[AutoPrompt]:
    """One prompt per connected blob of `anomaly_map >= threshold`, strongest first.

    Boxes are padded by `pad` of their size (at least 4 px): the map is blurred and coarse, so its blob edges
    sit inside or outside the defect by a few pixels, and SAM-style decoders do better with a box that
    encloses the object than with one that cuts it.
    """
    h, w = anomaly_map.shape
    hot = (anomaly_map >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
    prompts = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        blob = np.where(labels[y:y + bh, x:x + bw] == i, anomaly_map[y:y + bh, x:x + bw], -np.inf)
        py, px = np.unravel_index(int(np.argmax(blob)), blob.shape)
        dx, dy = max(4.0, pad * bw), max(4.0, pad * bh)
        box = (max(0.0, x - dx), max(0.0, y - dy), min(w - 1.0, x + bw + dx), min(h - 1.0, y + bh + dy))
        prompts.append(AutoPrompt(box, (float(x + px), float(y + py)), float(blob[py, px]), area))
    prompts.sort(key=lambda p: -p.peak)
    return prompts[:max_prompts]


@dataclass
class Proposal:
    prompt: AutoPrompt
    mask: np.ndarray  # bool H x W
    score: float  # the segmenter's predicted IoU

    def to_json(self) -> dict:
        rle = mask_utils.encode(np.asfortranarray(self.mask.astype(np.uint8)))
        return {"prompt": asdict(self.prompt), "score": round(self.score, 4),
                "rle": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def propose(image: np.ndarray, anomaly_map: np.ndarray, threshold: float, segmenter: PromptSegmenter,
            key: str | None = None, min_area: int = 16) -> list[Proposal]:
    """Proposed masks for one image from its anomaly map (any model's: a map on the model's own grid, as the
    RGB + 3D model's, is brought to the image's size first)."""
    h, w = image.shape[:2]
    if anomaly_map.shape[:2] != (h, w):
        anomaly_map = cv2.resize(anomaly_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    prompts = prompts_from_map(anomaly_map, threshold, min_area)
    if not prompts:
        return []
    emb = segmenter.embed(image, key)
    out = []
    for p in prompts:
        seg = segmenter.predict(emb, points=[p.point], labels=[1], box=p.box)
        if seg.mask.any():
            out.append(Proposal(p, seg.mask, float(seg.score)))
    return out


def propose_masks(
    model_dir: str | Path, segmenter_dir: str | Path, data: str | Path, out: str | Path,
    category: str | None = None, splits: list[str] | None = None, threshold: float | None = None,
    device: str = "auto", progress: Progress | None = None,
) -> dict:
    """Proposals for every image of a dataset, written to OUT/proposals.json keyed like the GUI's browser."""
    anomaly = open_model(model_dir, device)
    segmenter = PromptSegmenter(segmenter_dir, device=device, cache_size=2)
    root = Path(data)
    ds = load_dataset(root, category=category)
    samples = select_samples(ds.samples, splits)
    if not samples:
        raise DefectScopeError(f"{root}: no images to propose masks for")
    level = anomaly.threshold if threshold is None else threshold
    items: dict[str, list[dict]] = {}
    errors: dict[str, str] = {}

    def message(done: int, total: int) -> str:
        return f"{done}/{total} images, {sum(map(len, items.values()))} proposals"

    for r in score_samples(anomaly, samples, key=lambda s: sample_key(root, s), progress=progress,
                           message=message):
        if not isinstance(r, Scored):
            errors[r.key] = r.error
            continue
        found = propose(r.image, r.anomaly_map, level, segmenter, r.key)
        if found:
            items[r.key] = [p.to_json() for p in found]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": str(Path(model_dir).resolve()), "segmenter": str(Path(segmenter_dir).resolve()),
               "data": str(root.resolve()), "category": category, "items": items, "errors": errors}
    atomic_write_text(out / PROPOSALS_FILE, json.dumps(summary))
    return {"proposals": str(out / PROPOSALS_FILE), "n_images": len(samples),
            "n_with_proposals": len(items), "n_proposals": sum(map(len, items.values()))}


def propose_masks_job(params: ProposeMasksParams, progress: Progress) -> dict:
    return propose_masks(params.model, params.segmenter, params.data, params.out, params.category, params.splits,
                         params.threshold, params.device, progress)
