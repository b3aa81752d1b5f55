"""Training of the open-set detector: the closed-set schedule (trainers.detector.fit) with the open-set network
and exporter, on the images that show only known classes.

The text encoder is the ONNX one the runtime bundles (exported from the pip-shipped all-MiniLM-L6-v2 into the run
folder, or copied from a given export), and the training queries are embedded with it, so the vectors the head
learns against are bit for bit the ones inspection computes from the same words.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.class_prompts import prompts_for, read_prompts
from engine.datasets.detection import images_of_classes, load_detection_set
from engine.errors import DatasetError
from engine.jobs.kinds_detector import TrainOpenDetectorParams
from engine.jobs.registry import Progress
from engine.runtime import open_detector_format as fmt
from engine.runtime.text import METADATA_FILE as TEXT_METADATA_FILE
from engine.runtime.text import TextEncoder
from trainers.detector.fit import FitConfig, Variant, train_detector
from trainers.detector.open_export import publish_open
from trainers.detector.open_model import OpenDetector


def prompt_tensor(encoder: TextEncoder, prompts: dict[str, list[str]], classes: list[str]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, P, D] phrasing embeddings (padded) and the [K, P] mask of real ones, classes in training order."""
    per_class = [encoder.embed(prompts[c]) for c in classes]
    width = max(len(e) for e in per_class)
    emb = np.zeros((len(classes), width, per_class[0].shape[1]), np.float32)
    mask = np.zeros((len(classes), width), bool)
    for i, e in enumerate(per_class):
        emb[i, : len(e)] = e
        mask[i, : len(e)] = True
    return torch.from_numpy(emb), torch.from_numpy(mask)


def _text_encoder(params: TrainOpenDetectorParams, out: Path, progress: Progress) -> Path:
    """The encoder folder to train with and bundle: the given export copied into the run, else a new export."""
    dst = out / fmt.TEXT_ENCODER_DIR
    if params.text_encoder:
        src = Path(params.text_encoder)
        if not (src / TEXT_METADATA_FILE).is_file():
            raise DatasetError(f"text_encoder {src}: not an exported text encoder ({TEXT_METADATA_FILE} missing)")
        if src.resolve() != dst.resolve():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        return dst
    if not (dst / TEXT_METADATA_FILE).is_file():
        from trainers.text.export import export_text_encoder

        export_text_encoder(dst, lambda f, m: progress(0.02 * f, f"text encoder: {m}"))
    return dst


def train_open_job(params: TrainOpenDetectorParams, progress: Progress) -> dict:
    full = load_detection_set(params.data)
    known = list(params.classes) if params.classes else list(full.classes)
    dataset = images_of_classes(full, known)
    given = read_prompts(params.prompts) if params.prompts else {}
    prompts = prompts_for(known, given)
    out = Path(params.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder_dir = _text_encoder(params, out, progress)
    emb, mask = prompt_tensor(TextEncoder(encoder_dir), prompts, known)
    variant = Variant(build=lambda arch: OpenDetector(arch, emb.shape[2], emb, mask),
                      publish=functools.partial(publish_open, prompts=prompts, text_encoder=encoder_dir))
    cfg = FitConfig(epochs=params.epochs, image_size=params.image_size, backbone=params.backbone,
                    batch_size=params.batch_size, lr=params.lr, device=params.device, init=params.init,
                    seed=params.seed, time_budget_s=params.time_budget_s, label_fraction=params.label_fraction,
                    freeze_trunk=params.freeze_trunk)
    return train_detector(dataset, out, cfg, progress, variant)
