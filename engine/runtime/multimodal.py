"""RGB + 3D anomaly model at inspection time (torch-free): two memory banks, cross-modal stand-ins, fusion.

A model folder (written by trainers.multimodal) holds:
  rgb_features.onnx   image (H x W x 3 uint8) -> 1 x D x g x g patch features (resize inside the graph)
  rgb_to_geo.onnx     N x D standardised RGB features -> N x 33 standardised 3D features (distillation)
  geo_to_rgb.onnx     the reverse
  banks.npz           coresets of standardised patch features of good training parts: rgb and geo (measured),
                      rgb_pred and geo_pred (the stand-ins predicted for them), standardisation statistics,
                      per-pixel mean and spread of the stand-ins' maps on good parts (pixmu_*, pixsd_*)
  multimodal.json     grid sizes, preprocessing, the 3D input's kind and features, per-(modality, source) score
                      normalisation, fusion weights, metadata

Scoring one part: each available modality gives its patch features; a missing one is predicted from the other by
the distillation network and queried against a bank of that modality: by default the measured bank
(`stand_in_bank="measured"`), or the bank of stand-ins predicted for the training parts ("predicted", which
cancels the translator's systematic error but also inherits how well it fits its own training parts);
benchmarks/multimodal_3d.py measures both. Each source's patch distances become a blurred map,
normalised by what held-out good parts score (0 = their mean, 1 = one standard deviation above), and the fused
map is the weighted mean of the two, with the weights in multimodal.json ("fusion": chosen at training from
held-out good parts, or fixed by hand; see trainers.multimodal.fit). A stand-in's map against the measured bank is first normalised per pixel by good
parts' maps: the translator errs more in some places than others (part edges, the background ring) on every
part, and only departures from that pattern are anomalies (measured: benchmarks/RESULTS.md, "RGB + 3D").
Only the files of the modalities asked for are opened: scoring from RGB alone never touches the point cloud,
and the reverse.

3D features depend on what the sensor delivers ("geo_features" in multimodal.json): for xyz clouds (metric
points), FPFH (open3d) on the preprocessed cloud; for depth maps (no x / y pitch, often no known scale), the
RGB patch graph run on a geometry image of the map (relief, curvature, slope; engine.geometry.depth_image), read
the way the depth kind detected at training says ("depth" in multimodal.json). Either is the same code in training
and inspection; a depth map of another bit depth than the model's is refused, naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.datasets.imageio import read_image
from engine.datasets.types import Sample
from engine.errors import DefectScopeError
from engine.runtime.model_format import MULTIMODAL_BANKS_FILE as BANKS_FILE
from engine.runtime.model_format import MULTIMODAL_METADATA_FILE as METADATA_FILE
from engine.runtime.model_format import BaseScorer, ModelInfo, ScoringInput
from engine.runtime.session import create_session

RGB_FEATURES_FILE = "rgb_features.onnx"
RGB_TO_GEO_FILE = "rgb_to_geo.onnx"
GEO_TO_RGB_FILE = "geo_to_rgb.onnx"
SOURCES = ("rgb", "geo", "rgb_pred", "geo_pred")  # feature sources: measured, and predicted from the other one
MEASURED_BANK = {"rgb": "rgb", "geo": "geo", "rgb_pred": "rgb", "geo_pred": "geo"}
STAND_IN_BANKS = ("measured", "predicted")
GEO_FEATURES = ("fpfh", "depth_image")  # xyz clouds / depth maps
MODES = {  # what a report mode uses: (rgb source, geo source); None = modality left out
    "both": ("rgb", "geo"),
    "rgb_only": ("rgb", None),
    "geo_only": (None, "geo"),
    "rgb_with_distilled_geo": ("rgb", "geo_pred"),
    "geo_with_distilled_rgb": ("rgb_pred", "geo"),
}


@dataclass
class MultimodalPrediction:
    score: float
    anomaly_map: np.ndarray  # map_size x map_size float32, fused and normalised
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # per source used, normalised
    opened: list[str] = field(default_factory=list)  # files read for this prediction


def nearest_distances(queries: np.ndarray, bank: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distance of each query row to its nearest bank row (float32, chunked to bound memory)."""
    bank = np.ascontiguousarray(bank, np.float32)
    b2 = (bank * bank).sum(1)
    out = np.empty(len(queries), np.float32)
    for i in range(0, len(queries), chunk):
        q = np.ascontiguousarray(queries[i : i + chunk], np.float32)
        d2 = (q * q).sum(1)[:, None] + b2[None, :] - 2.0 * q @ bank.T
        out[i : i + chunk] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def patch_map(distances: np.ndarray, cells: int, map_size: int, sigma: float) -> np.ndarray:
    """cells*cells patch distances -> map_size x map_size map, bilinear then Gaussian-blurred (PatchCore's)."""
    m = cv2.resize(distances.reshape(cells, cells).astype(np.float32), (map_size, map_size),
                   interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0 else m


class MultimodalModel:
    """Loads a model folder; `features_*` and `predict` are what the trainer, the engine and the GUI all run."""

    def __init__(self, model_dir: str | Path, threads: int | None = None) -> None:
        self.dir = Path(model_dir)
        meta_path = self.dir / METADATA_FILE
        if not meta_path.is_file():
            raise DefectScopeError(f"{self.dir}: not a multimodal model folder (no {METADATA_FILE})")
        self.meta = json.loads(meta_path.read_text())
        self.cells: int = self.meta["cells"]
        self.map_size: int = self.meta["map_size"]
        self.sigma: float = self.meta["blur_sigma"]
        self.norm: dict[str, list[float]] = self.meta.get("normalisation", {})
        self.stand_in_bank: str = self.meta.get("stand_in_bank", "measured")
        self.geo_features: str = self.meta.get("geo_features", "fpfh")
        if self.geo_features not in GEO_FEATURES:
            raise DefectScopeError(f"{meta_path}: unknown geo_features '{self.geo_features}'")
        fusion = self.meta.get("fusion") or {}
        self.weights: dict[str, float] = {s: float(fusion.get("weights", {}).get(s, 1.0)) for s in SOURCES}
        self._threads = threads
        self._sessions: dict[str, object] = {}
        banks_path = self.dir / BANKS_FILE
        self.banks: dict[str, np.ndarray] = {}
        self.stats: dict[str, np.ndarray] = {}
        self.pixel_norm: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # stand-in source -> (mean map, spread map)
        if banks_path.is_file():
            with np.load(banks_path) as z:
                self.banks = {k: z[k] for k in SOURCES if k in z}
                self.stats = {k: z[k] for k in z.files if k.endswith(("_mean", "_std"))}
                self.pixel_norm = {s: (z[f"pixmu_{s}"], z[f"pixsd_{s}"]) for s in SOURCES if f"pixmu_{s}" in z}

    # ------------------------------------------------------------------ sessions
    def _session(self, name: str) -> Any:  # an onnxruntime.InferenceSession
        if name not in self._sessions:
            path = self.dir / name
            if not path.is_file():
                raise DefectScopeError(f"{self.dir}: {name} is missing")
            self._sessions[name] = create_session(path, "cpu", threads=self._threads)[0]
        return self._sessions[name]

    # ------------------------------------------------------------------ features (standardised, N x dim rows)
    def features_rgb(self, image: np.ndarray) -> np.ndarray:
        (f,) = self._session(RGB_FEATURES_FILE).run(None, {"image": np.ascontiguousarray(image)})
        rows = f[0].reshape(f.shape[1], -1).T
        return self._standardise("rgb", rows)

    @property
    def needs_open3d(self) -> bool:
        """Whether 3D features need open3d (FPFH of xyz clouds); geometry images of depth maps do not."""
        return self.geo_features == "fpfh"

    def depth_settings(self) -> tuple[Any, Any, int]:
        """(DepthKind, DepthScales or None, grid) of a depth-image model."""
        from engine.datasets.depth_kind import DepthKind
        from engine.geometry.depth_image import DepthScales

        depth = self.meta.get("depth") or {}
        if "kind" not in depth:
            raise DefectScopeError(f"{self.dir}: {METADATA_FILE} has no depth kind for its depth-image features")
        scales = depth.get("scales")
        return (DepthKind.from_dict(depth["kind"]), None if scales is None else DepthScales(**scales),
                int(depth.get("grid", self.map_size)))

    def features_geo(self, xyz_path: str | Path, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(standardised cells*cells x dim 3D rows, coverage per cell) of a point-cloud file: FPFH of an xyz cloud,
        or patch features of a depth map's geometry image (see the module's docstring)."""
        if self.geo_features == "depth_image":
            from engine.geometry.depth_image import geometry_image_file

            kind, scales, grid = self.depth_settings()
            img, measured, _, _ = geometry_image_file(xyz_path, grid, kind, scales)
            (f,) = self._session(RGB_FEATURES_FILE).run(None, {"image": np.ascontiguousarray(img)})
            g = f.shape[-1]
            coverage = cv2.resize(measured.astype(np.float32), (g, g), interpolation=cv2.INTER_AREA)
            return self._standardise("geo", f[0].reshape(f.shape[1], -1).T), coverage.reshape(-1)
        from engine.geometry.features import fpfh_grid
        from engine.geometry.preprocess import PrepConfig, prepare_file

        prep = prepare_file(xyz_path, PrepConfig(**self.meta["prep"]), cache_dir=cache_dir)
        feats, coverage = fpfh_grid(prep.xyz, self.cells)
        return self._standardise("geo", feats.reshape(-1, feats.shape[-1])), coverage.reshape(-1)

    def _standardise(self, modality: str, rows: np.ndarray) -> np.ndarray:
        mean, std = self.stats.get(f"{modality}_mean"), self.stats.get(f"{modality}_std")
        return rows.astype(np.float32) if mean is None else ((rows - mean) / std).astype(np.float32)

    def translate(self, rows: np.ndarray, to: str) -> np.ndarray:
        """Stand-in features of the other modality (to = 'geo' from RGB rows, 'rgb' from 3D rows)."""
        name = RGB_TO_GEO_FILE if to == "geo" else GEO_TO_RGB_FILE
        (out,) = self._session(name).run(None, {"features": np.ascontiguousarray(rows, np.float32)})
        return out

    # ------------------------------------------------------------------ scoring
    def bank_of(self, source: str) -> str:
        """The bank a feature source is queried against (see `stand_in_bank`)."""
        if self.stand_in_bank not in STAND_IN_BANKS:
            raise DefectScopeError(f"stand_in_bank must be one of {', '.join(STAND_IN_BANKS)}")
        return source if self.stand_in_bank == "predicted" else MEASURED_BANK[source]

    def raw_map(self, rows: np.ndarray, source: str) -> np.ndarray:
        return patch_map(nearest_distances(rows, self.banks[self.bank_of(source)]), self.cells, self.map_size,
                         self.sigma)

    def pixel_normalised(self, raw: np.ndarray, source: str) -> np.ndarray:
        """A stand-in's raw map against the measured bank, per pixel relative to good parts; others as they are."""
        pix = self.pixel_norm.get(source)
        if pix is None or self.bank_of(source) == source:
            return raw
        return (raw - pix[0]) / pix[1]

    def normalised(self, raw: np.ndarray, source: str) -> np.ndarray:
        center, scale = self.norm.get(f"{source}>{self.bank_of(source)}", (0.0, 1.0))
        return (self.pixel_normalised(raw, source) - center) / scale

    def predict(self, rgb_path: str | Path | np.ndarray | None = None, xyz_path: str | Path | None = None,
                mode: str | None = None, cache_dir: str | Path | None = None) -> MultimodalPrediction:
        """Score one part from whatever is given (the RGB image as a file or an already decoded array); `mode`
        (see MODES) defaults to the best the inputs allow."""
        if rgb_path is None and xyz_path is None:
            raise DefectScopeError("give an RGB image, a point cloud, or both")
        if mode is None:
            has_rgb, has_geo = rgb_path is not None, xyz_path is not None
            mode = "both" if has_rgb and has_geo else "rgb_with_distilled_geo" if has_rgb else (
                "geo_with_distilled_rgb")
        if mode not in MODES:
            raise DefectScopeError(f"unknown mode '{mode}'; known: {', '.join(MODES)}")
        rgb_source, geo_source = MODES[mode]
        needs_rgb = rgb_source == "rgb" or geo_source == "geo_pred"
        needs_geo = geo_source == "geo" or rgb_source == "rgb_pred"
        if needs_rgb and rgb_path is None:
            raise DefectScopeError(f"mode '{mode}' needs the RGB image")
        if needs_geo and xyz_path is None:
            raise DefectScopeError(f"mode '{mode}' needs the point cloud")
        rows, opened = self.rows(rgb_path if needs_rgb else None, xyz_path if needs_geo else None,
                                 {s for s in (rgb_source, geo_source) if s}, cache_dir)
        return self.fuse(rows, mode, opened)

    def rows(self, rgb_path: str | Path | np.ndarray | None, xyz_path: str | Path | None, sources: set[str],
             cache_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
        """Feature rows per source in `sources` from the files given (only those are opened)."""
        opened: list[str] = []
        rows: dict[str, np.ndarray] = {}
        if isinstance(rgb_path, np.ndarray):
            rows["rgb"] = self.features_rgb(rgb_path)
        elif rgb_path is not None:
            rows["rgb"] = self.features_rgb(read_image(rgb_path))
            opened.append(str(rgb_path))
        if xyz_path is not None:
            rows["geo"], _ = self.features_geo(xyz_path, cache_dir)
            opened.append(str(xyz_path))
        if "geo_pred" in sources:
            rows["geo_pred"] = self.translate(rows["rgb"], "geo")
        if "rgb_pred" in sources:
            rows["rgb_pred"] = self.translate(rows["geo"], "rgb")
        return rows, opened

    def mode_weights(self, mode: str) -> dict[str, float]:
        """The fusion weights of a mode's sources, summing to 1 (equal when the model's are all 0 for them)."""
        used = [s for s in MODES[mode] if s]
        w = {s: max(0.0, self.weights.get(s, 1.0)) for s in used}
        total = sum(w.values())
        return {s: (v / total if total > 0 else 1.0 / len(used)) for s, v in w.items()}

    def fuse(self, rows: dict[str, np.ndarray], mode: str, opened: list[str] | None = None) -> MultimodalPrediction:
        """The fused prediction of `mode` from feature rows (every source the mode uses must be in `rows`): the
        weighted mean of its sources' normalised maps (`mode_weights`)."""
        weights = self.mode_weights(mode)
        maps = {s: self.normalised(self.raw_map(rows[s], s), s) for s in weights}
        fused = np.zeros_like(next(iter(maps.values())), dtype=np.float32)
        for s, m in maps.items():
            fused += np.float32(weights[s]) * m
        return MultimodalPrediction(float(fused.max()), fused, maps, list(opened or []))


NO_OPEN3D_NOTE = ("open3d is not installed with this engine: parts were scored from their RGB image with the "
                  "distilled 3D stand-in, not from their point clouds (install the '3d' extra to use both sensors)")
NO_CLOUD_NOTE = ("no point cloud was given: images were scored from RGB with the distilled 3D stand-in (the "
                 "model's missing-sensor mode)")


class MultimodalScorer(BaseScorer):
    """The RGB + 3D model as a scorer: each part is scored from what it has (both sensors, or its image with the
    distilled 3D stand-in), and the notes say when a stand-in was used."""

    def __init__(self, info: ModelInfo, device: str = "auto") -> None:
        self.info = info
        self.model = MultimodalModel(info.folder)
        self.threshold = float(info.threshold if info.threshold is not None else 3.0)
        self.provider = "CPUExecutionProvider"  # the parts are small; MultimodalModel runs them on the CPU
        self.cache = Path(info.folder) / "cache" / "clouds"
        self.notes: list[str] = []
        # 3D features need open3d (the '3d' extra), which the inspection-PC installer leaves out (900 MB). Such
        # an install still scores RGB + 3D parts, from the image with the distilled 3D stand-in (the model's
        # missing-sensor mode), and says so, rather than failing every part.
        if not self.model.needs_open3d:
            self.geometry = True  # depth maps: geometry images need no open3d
        else:
            try:
                import open3d  # noqa: F401

                self.geometry = True
            except ImportError:
                self.geometry = False

    def read(self, sample: Sample) -> ScoringInput:
        from engine.datasets.pointcloud import cloud_path

        return ScoringInput(read_image(sample.image_path), Path(sample.image_path), cloud_path(sample.extra))

    def predict(self, inputs: ScoringInput) -> tuple[float, np.ndarray]:
        xyz = inputs.cloud_path
        if xyz is None:
            self.note(NO_CLOUD_NOTE)
        elif not self.geometry:
            xyz = None
            self.note(NO_OPEN3D_NOTE)
        pred = self.model.predict(inputs.image, xyz, cache_dir=self.cache)
        return pred.score, pred.anomaly_map
