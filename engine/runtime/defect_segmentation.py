"""Run a defect-segmentation model on images: the one torch-free inference path for that format
(engine.runtime.defect_segmentation_format describes the folder and the graph).

`DefectSegmenter(folder).segment(image)` returns per-pixel labels, the defect probability and per-class scores in
pixels of the original image. `DefectSegmentationScorer` makes it a scorer of the model-format registry: an image's
score is its highest defect probability and its map the defect probability, so eval, infer, score_dataset and the
workbench's heatmaps take it as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ModelError
from engine.runtime import defect_segmentation_format as fmt
from engine.runtime.model_format import BaseScorer, ModelInfo, ScoringInput, read_model_info
from engine.runtime.session import create_session


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray  # H x W uint8: 0 background, i the defect class classes[i - 1]
    defect_probability: np.ndarray  # H x W float32, 1 - p(background)
    class_scores: np.ndarray  # K float32, each class's highest probability over the image


def read_classes(info: ModelInfo, source: Path) -> list[str]:
    classes = info.metadata.get("classes")
    if (not isinstance(classes, list) or not classes or len(classes) > fmt.MAX_CLASSES
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        raise ModelError(f"{source}: classes must be a list of 1 to {fmt.MAX_CLASSES} distinct class names")
    if fmt.BACKGROUND in classes:
        raise ModelError(f"{source}: classes must not name '{fmt.BACKGROUND}' (it is label 0)")
    return list(classes)


class DefectSegmenter:
    """An opened defect-segmentation folder. `segment` is safe to call from several threads (ORT sessions are)."""

    def __init__(self, folder: str | Path | ModelInfo, device: str = "auto") -> None:
        info = folder if isinstance(folder, ModelInfo) else read_model_info(folder)
        if info.kind != fmt.KIND:
            raise ModelError(f"{info.folder}: a {info.kind} model is not a defect segmentation model "
                             f"(task: {info.task})")
        self.info = info
        self.classes = read_classes(info, info.folder / fmt.METADATA_FILE)
        path = info.folder / fmt.MODEL_FILE
        try:
            self.session, self.provider = create_session(path, device)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the defect segmentation model ({exc})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [fmt.INPUT_NAME] or not set(fmt.OUTPUT_NAMES) <= set(outputs):
            raise ModelError(f"{path}: not a DefectScope defect segmentation graph (inputs {inputs}, outputs "
                             f"{outputs}; expected input '{fmt.INPUT_NAME}' and outputs {', '.join(fmt.OUTPUT_NAMES)})")
        self.threshold = float(info.threshold if info.threshold is not None else fmt.LABEL_THRESHOLD)
        self.notes: list[str] = []

    def segment(self, image: np.ndarray) -> Segmentation:
        """image: H x W x 3 uint8 RGB (H x W grayscale is accepted too)."""
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
        labels, prob, scores = self.session.run(list(fmt.OUTPUT_NAMES), {fmt.INPUT_NAME: np.ascontiguousarray(image)})
        shape = image.shape[:2]
        return Segmentation(np.asarray(labels, np.uint8).reshape(shape), np.asarray(prob, np.float32).reshape(shape),
                            np.asarray(scores, np.float32).reshape(-1))


class DefectSegmentationScorer(BaseScorer):
    """A defect segmentation model in the scoring loops: score = the highest defect probability, map = the defect
    probability (the per-class labels are DefectSegmenter.segment's)."""

    def __init__(self, info: ModelInfo, device: str = "auto") -> None:
        self.segmenter = DefectSegmenter(info, device)
        self.info = info
        self.threshold = self.segmenter.threshold
        self.provider = self.segmenter.provider
        self.notes = self.segmenter.notes

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        prob = self.segmenter.segment(inputs.image).defect_probability
        return float(prob.max()) if prob.size else 0.0, prob
