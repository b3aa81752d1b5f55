"""Promptable segmentation (SAM-style clicks and boxes) on a model folder in the segmenter format.

Interactive annotation runs the expensive image encoder once per image and the small prompt decoder once per
click, so the pieces here are:

- `PromptSegmenter.embed` encodes an image (or returns a cached embedding), with the geometry needed to map
  prompts from original pixels into the model's resized frame;
- `PromptSegmenter.prefetch` encodes the next images in the background, so moving to the next image is instant,
  while a foreground request never queues behind those prefetches;
- `PromptSegmenter.predict` decodes points / a box / a previous mask into a mask at the original image size;
- `mask_to_polygons` / `polygons_to_mask` (re-exported from engine.geometry.polygons, their owner) convert
  between masks and annotation polygons.

The format is defined in engine.runtime.segmenter_format; prompt handling follows segment_anything's
SamPredictor and its ONNX example (box as two points labelled 2 and 3; a padding point labelled -1 when there is no
box). Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engine.datasets.imageio import read_image
from engine.errors import ModelError

# Re-exported: the annotation tools take them from here; engine.geometry.polygons owns them.
from engine.geometry.polygons import mask_to_polygons as mask_to_polygons
from engine.geometry.polygons import polygons_to_mask as polygons_to_mask
from engine.runtime import segmenter_format as fmt
from engine.runtime.session import create_session

log = logging.getLogger(__name__)

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")

# Point labels of the decoder interface.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT, PADDING = 0, 1, 2, 3, -1


@dataclass(frozen=True, eq=False)
class Embedding:
    """One encoded image and the transform from its original pixels to the model frame.

    features: float32 [1, C, h, w], read-only (it is shared through the cache).
    original_size: (H, W) of the image that was encoded.
    scale: input_size / max(H, W); a point (x, y) in original pixels is (x * scale, y * scale) in the model frame.
    """

    key: str
    features: np.ndarray
    original_size: tuple[int, int]
    scale: float
    input_size: int

    @property
    def resized_size(self) -> tuple[int, int]:
        """(h, w) of the image inside the padded model input (rounded as the encoder and decoder graphs do)."""
        h, w = self.original_size
        return int(np.floor(h * self.scale + 0.5)), int(np.floor(w * self.scale + 0.5))

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Original-pixel (x, y) coordinates (any shape [..., 2]) -> float32 coordinates in the model frame."""
        return np.asarray(xy, dtype=np.float32) * np.float32(self.scale)


@dataclass(eq=False)
class Prediction:
    """The decoder's answer to one set of prompts.

    mask: bool H x W at the original image size (the chosen output).
    score: the model's predicted IoU of `mask`.
    index: which of the K outputs was chosen (0 = single-mask output, 1..3 = multimask outputs).
    all_masks: bool K x H x W; all_scores: float32 K.
    low_res_logits: float32 [1, 1, 4h, 4w] logits of the chosen mask; pass it as `mask_input` with the next click
        to refine this mask rather than start over.
    """

    mask: np.ndarray
    score: float
    index: int
    all_masks: np.ndarray
    all_scores: np.ndarray
    low_res_logits: np.ndarray
    multimask: bool = False  # whether the best multimask output was chosen


def image_key(image: np.ndarray) -> str:
    """A content key for an image array: shape, dtype and a hash of every byte.

    Hashing all the pixels (a few ms per megapixel) is small next to an encoder run and, unlike a sampled
    hash, never confuses two images that differ in a few pixels; callers with a stable identity (a file path)
    should pass that as the key instead.
    """
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}{arr.dtype}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _as_rgb8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image {image.shape}")
    return np.ascontiguousarray(image)


class PromptSegmenter:
    """A loaded segmenter folder (encoder.onnx, decoder.onnx, segmenter.json).

    Thread-safe: `embed`, `predict` and `is_ready` may be called from several threads at once (ONNX Runtime
    sessions are thread-safe; the cache is guarded by a lock). Call `close` (or use it as a context manager) to
    stop the prefetch thread.
    """

    def __init__(
        self, model_dir: str | Path, device: str = "auto", cache_size: int = 8, threads: int | None = None
    ) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelError(f"{self.model_dir}: segmenter directory does not exist")
        self.metadata = self._read_metadata(self.model_dir / fmt.METADATA_FILE)
        self.family: str = self.metadata["family"]
        self.input_size: int = int(self.metadata["input_size"])
        self.embedding_shape: tuple[int, int, int] = tuple(self.metadata["embedding_shape"])  # type: ignore[assignment]
        self._encoder, self.encoder_provider = self._load(
            self.model_dir / fmt.ENCODER_FILE, device, threads, [ENCODER_INPUT], [ENCODER_OUTPUT]
        )
        self._decoder, self.decoder_provider = self._load(
            self.model_dir / fmt.DECODER_FILE, device, threads, list(DECODER_INPUTS), list(DECODER_OUTPUTS)
        )
        enc_in = self._encoder.get_inputs()[0]
        if enc_in.type != "tensor(uint8)" or len(enc_in.shape) != 3:
            raise ModelError(
                f"{self.model_dir / fmt.ENCODER_FILE}: input '{ENCODER_INPUT}' must be uint8 [H, W, 3], "
                f"got {enc_in.type} {enc_in.shape}"
            )
        _, h, w = self.embedding_shape
        # Allocated once: most clicks have no previous mask, and the decoder only reads these.
        self._no_mask = np.zeros((1, 1, 4 * h, 4 * w), np.float32)
        self._no_mask.flags.writeable = False
        self._has_mask = (np.zeros(1, np.float32), np.ones(1, np.float32))
        for a in self._has_mask:
            a.flags.writeable = False

        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self._in_flight: dict[str, Future[Embedding]] = {}
        self._cond = threading.Condition(threading.Lock())
        self._foreground = 0  # foreground encodes running; prefetches wait for zero before starting
        self._prefetch_run: tuple[str, ort.RunOptions] | None = None  # the prefetch encoding now, to cancel it
        self._prefetch_generation = 0
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    # ----------------------------------------------------------------------------------------------- loading
    @staticmethod
    def _read_metadata(path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise ModelError(f"{path}: missing; not a DefectScope segmenter folder")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable segmenter metadata ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{path}: segmenter metadata must be a JSON object")
        if meta.get("format") != fmt.FORMAT:
            raise ModelError(f"{path}: format is {meta.get('format')!r}, this version reads {fmt.FORMAT!r}")
        if meta.get("family") not in fmt.FAMILIES:
            raise ModelError(f"{path}: unknown family {meta.get('family')!r}; known: {', '.join(fmt.FAMILIES)}")
        size = meta.get("input_size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ModelError(f"{path}: input_size must be a positive integer, got {size!r}")
        shape = meta.get("embedding_shape")
        if (
            not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        ):
            raise ModelError(f"{path}: embedding_shape must be [C, h, w] positive integers, got {shape!r}")
        return meta

    @staticmethod
    def _load(path: Path, device: str, threads: int | None, inputs: list[str], outputs: list[str]) -> tuple[Any, str]:
        if not path.is_file():
            raise ModelError(f"{path}: missing; a segmenter folder needs {fmt.ENCODER_FILE} and {fmt.DECODER_FILE}")
        try:
            session, provider = create_session(path, device=device, threads=threads)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load the model ({exc})") from None
        have_in = {i.name for i in session.get_inputs()}
        have_out = {o.name for o in session.get_outputs()}
        missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
        if missing:
            raise ModelError(
                f"{path}: not a segmenter graph (missing {', '.join(missing)}; has inputs {sorted(have_in)}, "
                f"outputs {sorted(have_out)})"
            )
        return session, provider

    # --------------------------------------------------------------------------------------------- embedding
    def _encode(self, image: np.ndarray, key: str, run_options: ort.RunOptions | None = None) -> Embedding:
        image = _as_rgb8(image)
        (features,) = self._encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: image}, run_options)
        if features.shape[1:] != self.embedding_shape:
            raise ModelError(
                f"{self.model_dir / fmt.ENCODER_FILE}: embedding shape {list(features.shape)} does not match "
                f"embedding_shape {list(self.embedding_shape)} in {fmt.METADATA_FILE}"
            )
        features = np.ascontiguousarray(features, dtype=np.float32)
        features.flags.writeable = False
        h, w = image.shape[:2]
        return Embedding(key, features, (h, w), self.input_size / max(h, w), self.input_size)

    def _store(self, emb: Embedding) -> None:
        """Insert under the lock (caller holds it)."""
        self._cache[emb.key] = emb
        self._cache.move_to_end(emb.key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def embed(self, image: np.ndarray, key: str | None = None) -> Embedding:
        """The embedding of `image` (H x W x 3 uint8 RGB; grayscale is accepted), from the cache when it is there.

        `key` identifies the image in the cache (e.g. its path); without one, `image_key(image)` is used. A request
        for an image that a prefetch is encoding right now waits for that result instead of encoding it twice.
        """
        if key is None:
            key = image_key(image)
        while True:
            with self._cond:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    return cached
                pending = self._in_flight.get(key)
                if pending is None:
                    pending = self._in_flight[key] = Future()
                    self._foreground += 1
                    if self._prefetch_run is not None:
                        # A prefetch of another image would share the cores with this request for its whole
                        # run; cancel it (it starts again once no foreground encode is running).
                        self._prefetch_run[1].terminate = True
                    break
            try:
                return pending.result()
            except Exception:
                continue  # that attempt failed (e.g. a prefetch could not read the file): encode it ourselves
        try:
            emb = self._encode(image, key)
        except BaseException as exc:
            with self._cond:
                del self._in_flight[key]
                self._foreground -= 1
                self._cond.notify_all()
            pending.set_exception(exc)
            raise
        with self._cond:
            self._store(emb)
            del self._in_flight[key]
            self._foreground -= 1
            self._cond.notify_all()
        pending.set_result(emb)
        return emb

    def embed_path(self, path: str | Path, key: str | None = None) -> Embedding:
        """`embed` for an image file; the key defaults to the path, as in `prefetch`."""
        key = str(path) if key is None else key
        with self._cond:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        return self.embed(read_image(path), key)

    def is_ready(self, key: str) -> bool:
        """True when `key`'s embedding is cached (an `embed` for it returns at once)."""
        with self._cond:
            return key in self._cache

    def cached_keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._cond:
            return list(self._cache)

    def prefetch(self, images_or_paths: Sequence[np.ndarray | str | Path], keys: Sequence[str] | None = None) -> None:
        """Encode these images in a background thread, in order; returns at once.

        Items are image arrays or paths. Keys default to the path (str) for paths and `image_key` for arrays.
        Each call replaces the previous call's not-yet-started items (the GUI calls this with the next few images
        whenever the user moves, so older requests are stale). Items already cached or being encoded are
        skipped, and at most cache_size - 1 items are taken (prefetching must not evict the image in use).
        Foreground requests keep the cores: a prefetch never starts while a foreground `embed` is encoding, and
        one already running is cancelled (ONNX Runtime's terminate flag) and redone afterwards.
        """
        if self._closed:
            raise RuntimeError("PromptSegmenter is closed")
        items = list(images_or_paths)
        if keys is not None and len(keys) != len(items):
            raise ValueError(f"{len(keys)} keys for {len(items)} images")
        limit = max(0, self.cache_size - 1)
        with self._cond:
            self._prefetch_generation += 1
            generation = self._prefetch_generation
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter-prefetch")
            for i, item in enumerate(items[:limit]):
                key = keys[i] if keys is not None else None
                self._executor.submit(self._prefetch_one, item, key, generation)

    def _prefetch_one(self, item: np.ndarray | str | Path, key: str | None, generation: int) -> None:
        try:
            if key is None:
                key = str(item) if isinstance(item, (str, Path)) else image_key(item)
        except Exception:  # not an image or a path: nothing to clean up
            log.warning("segmenter prefetch skipped an item", exc_info=True)
            return
        image: np.ndarray | None = None
        while True:  # more than once only when a foreground request cancelled the encode
            with self._cond:
                while self._foreground and generation == self._prefetch_generation and not self._closed:
                    self._cond.wait()
                if (
                    generation != self._prefetch_generation or self._closed
                    or key in self._cache or key in self._in_flight
                ):
                    return
                pending: Future[Embedding] = Future()
                self._in_flight[key] = pending
                run_options = ort.RunOptions()
                self._prefetch_run = (key, run_options)
            try:
                if image is None:
                    image = read_image(item) if isinstance(item, (str, Path)) else item
                emb = self._encode(image, key, run_options)
            except Exception as exc:
                with self._cond:
                    del self._in_flight[key]
                    self._prefetch_run = None
                    cancelled = run_options.terminate
                    self._cond.notify_all()
                pending.set_exception(exc)  # a foreground request waiting on it encodes the image itself
                if cancelled:
                    continue
                # a prefetch failure is not the user's action: log it; `embed` reports it if the user goes there
                log.warning("segmenter prefetch of %s failed: %s", key, exc)
                return
            with self._cond:
                self._store(emb)
                del self._in_flight[key]
                self._prefetch_run = None
                self._cond.notify_all()
            pending.set_result(emb)
            return

    def close(self) -> None:
        """Drop queued prefetches and stop the prefetch thread (waits for an encode in progress)."""
        with self._cond:
            self._closed = True
            self._prefetch_generation += 1
            executor, self._executor = self._executor, None
            self._cond.notify_all()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PromptSegmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- decoding
    def predict(
        self,
        embedding: Embedding,
        points: Sequence[tuple[float, float]] = (),
        labels: Sequence[int] = (),
        box: tuple[float, float, float, float] | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool | None = None,
    ) -> Prediction:
        """Decode prompts in ORIGINAL image pixels into a mask at the original size.

        points / labels: (x, y) clicks, label 1 = object, 0 = background (labels default to all 1).
        box: (x0, y0, x1, y1), corners in any order.
        mask_input: `low_res_logits` of a previous prediction, to refine it with more clicks.
        multimask: return the best of the three multimask outputs (by predicted IoU) rather than the single-mask
            output; default True for exactly one point without box or mask_input (an ambiguous click), else False.
        """
        if embedding.features.shape[1:] != self.embedding_shape or embedding.input_size != self.input_size:
            raise ValueError("the embedding was not made by this segmenter")
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        n_points = len(pts)
        if len(labels) == 0:
            lab = np.full(len(pts), POSITIVE, np.float32)
        else:
            lab = np.asarray(labels, dtype=np.float32).reshape(-1)
            if len(lab) != len(pts):
                raise ValueError(f"{len(lab)} labels for {len(pts)} points")
            if not np.isin(lab, (NEGATIVE, POSITIVE)).all():
                raise ValueError(f"point labels must be 0 (background) or 1 (object), got {sorted(set(lab))}")
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            pts = np.concatenate([pts, [[min(x0, x1), min(y0, y1)], [max(x0, x1), max(y0, y1)]]])
            lab = np.concatenate([lab, [BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]])
        else:
            # SAM was trained with a "not a point" token standing in for the missing box.
            pts = np.concatenate([pts, [[0.0, 0.0]]])
            lab = np.concatenate([lab, [PADDING]])
        if len(pts) == 1 and mask_input is None:
            raise ValueError("predict needs at least one point, a box or a mask_input")
        coords = embedding.to_model(pts)[None]  # padding point (0, 0) stays (0, 0)
        if mask_input is None:
            mask_in, has_mask = self._no_mask, self._has_mask[0]
        else:
            mask_in = np.asarray(mask_input, dtype=np.float32)
            if mask_in.size != self._no_mask.size:
                raise ValueError(f"mask_input must be {self._no_mask.shape[-2:]} logits, got {mask_in.shape}")
            mask_in, has_mask = mask_in.reshape(self._no_mask.shape), self._has_mask[1]
        if multimask is None:
            multimask = n_points == 1 and box is None and mask_input is None
        h, w = embedding.original_size
        masks, ious, low_res = self._decoder.run(
            list(DECODER_OUTPUTS),
            {
                "image_embeddings": embedding.features,
                "point_coords": coords,
                "point_labels": lab.astype(np.float32, copy=False)[None],
                "mask_input": mask_in,
                "has_mask_input": has_mask,
                "orig_im_size": np.array([h, w], np.float32),
            },
        )
        scores = ious[0]
        index = 1 + int(np.argmax(scores[1:])) if multimask and len(scores) > 1 else 0
        all_masks = masks[0] > 0  # one pass over the logits; `mask` is a view into it
        return Prediction(
            mask=all_masks[index],
            score=float(scores[index]),
            index=index,
            all_masks=all_masks,
            all_scores=scores,
            low_res_logits=low_res[:, index : index + 1].copy(),  # small; do not keep the other K-1 alive
            multimask=multimask,
        )
