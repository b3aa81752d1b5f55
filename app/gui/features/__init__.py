"""The workbench's features, one controller per module, and the table the main window is built from.

A new feature (e.g. the GUI of a new model kind) is one controller module here plus one row below: its dock, menu
actions and job callbacks live in the controller; the main window lays out the rows and routes navigation.
Rows are made in this order (a controller may use the ones above it while it is being made); a row's `name` is
the window attribute the controller is reachable by (`window.scoring`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.gui.features.annotation import AnnotationFeature
from app.gui.features.base import Feature, MenuEntry
from app.gui.features.cloud import CloudFeature
from app.gui.features.detection import DetectionFeature
from app.gui.features.engine import EngineFeature
from app.gui.features.export import ExportFeature
from app.gui.features.models import ModelsFeature
from app.gui.features.open_set import OpenSetFeature
from app.gui.features.pretraining import PretrainingFeature
from app.gui.features.scoring import ScoringFeature
from app.gui.features.synthesis import SynthesisFeature
from app.gui.features.text_prompts import TextPromptsFeature
from app.gui.features.training import TrainingFeature
from app.gui.features.unified import UnifiedFeature


@dataclass(frozen=True)
class FeatureRow:
    name: str
    controller: type[Feature]
    dock: str | None = None  # title of its dock in the bottom tab group; None: no dock (or one it adds later)


FEATURES: tuple[FeatureRow, ...] = (
    FeatureRow("engine", EngineFeature, dock="Jobs"),
    FeatureRow("models", ModelsFeature, dock="Models"),
    FeatureRow("scoring", ScoringFeature, dock="Metrics"),
    FeatureRow("annotation", AnnotationFeature, dock="Annotate"),
    FeatureRow("detection", DetectionFeature, dock="Detect"),  # accepts boxes into the annotation row's store
    FeatureRow("open_set", OpenSetFeature, dock="Find"),  # shows its hits in the detection row's dock
    FeatureRow("pretraining", PretrainingFeature),  # shows its proposals in the detection row's dock
    FeatureRow("export", ExportFeature),
    FeatureRow("text_prompts", TextPromptsFeature),
    FeatureRow("cloud", CloudFeature),  # its "3D" dock appears with the first part that has a point cloud
    FeatureRow("training", TrainingFeature),
    FeatureRow("unified", UnifiedFeature),
    FeatureRow("synthesis", SynthesisFeature, dock="Synthetic"),  # the gallery of the last synthetic set
)

__all__ = ["FEATURES", "Feature", "FeatureRow", "MenuEntry"]
