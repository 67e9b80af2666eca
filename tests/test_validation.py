from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.engine import as_rgb_uint8, read_image


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_conversions() -> None:
    assert as_rgb_uint8(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    assert as_rgb_uint8(np.ones((3, 4, 1), bool))[0, 0, 0] == 255
    assert as_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16))[0, 0, 0] == 255
    assert as_rgb_uint8(np.full((2, 2, 3), 0.5))[0, 0, 0] == 128
    with pytest.raises(ValueError, match="unsupported pixel dtype complex128"):
        as_rgb_uint8(np.zeros((2, 2, 3), complex))
    with pytest.raises(ValueError, match="expected a numpy array"):
        as_rgb_uint8([[1, 2]])


def test_read_image_formats(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(read_image(_png(rgb)), rgb)
    rgba = np.dstack([rgb, np.full((5, 7), 128, np.uint8)])
    assert np.array_equal(read_image(_png(rgba)), rgb)
    deep = np.full((5, 7), 65535, np.uint16)
    assert read_image(_png(deep)).shape == (5, 7, 3) and read_image(_png(deep)).max() == 255
    path = tmp_path / "x.png"
    path.write_bytes(_png(rgb))
    assert read_image(path).shape == (5, 7, 3)


def test_read_image_errors(tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg: not a readable image"):
        read_image(bad)
    with pytest.raises(ValueError, match=r"missing\.png: no such file"):
        read_image(tmp_path / "missing.png")
    big = _png(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="100x100 = 10000 pixels exceeds the limit of 9999"):
        read_image(big, max_pixels=9999)
