"""Reading images and masks safely: every failure names the file; previews of huge images stay small."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Industrial line-scan and stitched images exceed PIL's default bomb limit; 400 MP still refuses absurd files.
Image.MAX_IMAGE_PIXELS = 400_000_000


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header only, without decoding the pixels."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return im.size
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ImageReadError(p, f"not a readable image ({exc.__class__.__name__}: {exc})") from None


def read_image(path: str | Path) -> np.ndarray:
    """The full image as H x W x 3 uint8 RGB (grayscale and 16-bit images are converted)."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    data = np.fromfile(p, dtype=np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    if data.size == 0:
        raise ImageReadError(p, "file is empty")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(p, "cannot decode image (corrupt or unsupported format)")
    if _is_truncated(p, data):
        raise ImageReadError(p, "image data is truncated")
    return _to_rgb8(img, p)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask (H x W bool); any non-zero pixel of any channel is defect.

    `shape` (H, W) is checked when given: a mask of the wrong size is an error, never silently resized.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "mask file not found")
    img = cv2.imdecode(np.fromfile(p, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(p, "cannot decode mask")
    mask = img.any(axis=2) if img.ndim == 3 else img > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(p, f"mask size {mask.shape[1]}x{mask.shape[0]} does not match image size {shape[1]}x{shape[0]}")
    return mask


def read_preview(path: str | Path, max_side: int = 1024) -> np.ndarray:
    """A downscaled RGB copy whose longer side is at most `max_side`.

    JPEGs are decoded at reduced scale directly (DCT scaling), so an 8k x 8k photo never needs its full buffer.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            im.load()
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except Exception as exc:
        raise ImageReadError(p, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None


def _is_truncated(path: Path, data: np.ndarray) -> bool:
    # OpenCV decodes truncated JPEG/PNG files with grey filler and only a warning; check the end markers.
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        tail = data[-64:].tobytes().rstrip(b"\x00")
        return not tail.endswith(b"\xff\xd9")
    if suffix == ".png":
        return b"IEND" not in data[-64:].tobytes()
    return False


def _to_rgb8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(path, f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    raise ImageReadError(path, f"unsupported channel count {img.shape[2]}")
