"""Image reading: clear per-file errors, and huge images previewed without decoding them at full size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.datasets.imageio import image_size, read_image, read_mask, read_preview
from engine.errors import ImageReadError

REPO = Path(__file__).resolve().parents[1]


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    img = (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)
    for suffix in (".png", ".jpg"):
        good = tmp_path / f"good{suffix}"
        cv2.imwrite(str(good), img)
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(ImageReadError, match=re.escape(f"cut{suffix}")):
            read_image(cut)
        assert read_image(good).shape == (120, 90, 3)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"junk\.png"):
        read_image(junk)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        image_size(tmp_path / "missing.png")


def test_mask_of_the_wrong_size_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((50, 60), np.uint8))
    with pytest.raises(ImageReadError, match="does not match"):
        read_mask(tmp_path / "m.png", shape=(60, 50))
    rgb = np.zeros((50, 60, 3), np.uint8)
    rgb[10, 10, 2] = 255
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    mask = read_mask(tmp_path / "rgb.png", shape=(50, 60))
    assert mask.sum() == 1 and mask[10, 10]


def test_grayscale_and_16bit_images_become_rgb8(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((20, 30), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((20, 30), 65535, np.uint16))
    assert read_image(tmp_path / "g.png").shape == (20, 30, 3)
    assert read_image(tmp_path / "g16.png").max() == 255


@pytest.mark.slow
def test_8k_image_preview_stays_small(tmp_path):
    """An 8000 x 8000 JPEG previews in a fresh process without allocating its 192 MB full-resolution buffer."""
    path = tmp_path / "huge.jpg"
    y, x = np.mgrid[0:8000, 0:8000]
    img = np.stack([(x // 31) % 256, (y // 17) % 256, ((x + y) // 23) % 256], axis=2).astype(np.uint8)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del img, x, y
    code = (
        "import resource, sys\n"
        "from engine.datasets.imageio import read_preview, image_size\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"p = read_preview({str(path)!r}, 1024)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"assert image_size({str(path)!r}) == (8000, 8000)\n"
        "print(p.shape[0], p.shape[1], (after - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    h, w, grew_mb = map(int, out.split())
    assert max(h, w) == 1024
    assert grew_mb < 60, f"preview of an 8k image grew the process by {grew_mb} MB"
    assert read_preview(path, 256).shape[:2] == (256, 256)
