"""Input checks and conversions: images to HxWx3 uint8, prompts against the image they target.

Every error is a ValueError that says exactly what is wrong (which prompt, which field, which value).
"""

from __future__ import annotations

import contextlib
import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from models.engine.types import LOW_RES, Prompt

DEFAULT_MAX_PIXELS = 64_000_000  # refuse decompression bombs well before memory runs out
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(directory: str | Path, what: str = "") -> dict[str, Path]:
    """stem -> path of every image file in a folder, sorted by stem; `what` (e.g. a flag) leads the
    error when it is not a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{what} {directory}: not a folder".lstrip())
    found = {p.stem: p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    return dict(sorted(found.items()))


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert grayscale, RGBA, 16-bit, float [0, 1] or bool images to contiguous HxWx3 uint8."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected HxW, HxWx1, HxWx3 or HxWx4 pixels, got shape {image.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    arr = arr[..., :3]  # RGBA: alpha dropped
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: float pixels contain NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float pixels must lie in [0, 1], found [{lo:.3g}, {hi:.3g}]")
        arr = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"{name}: unsupported pixel dtype {arr.dtype}; use uint8, uint16, bool or float")
    return np.ascontiguousarray(arr)


class ImageTooLarge(ValueError):
    """An image over the pixel cap (servers answer 413 rather than 400)."""


EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# what a damaged EXIF block raises while Pillow reads it; the pixels are then used as stored
EXIF_ERRORS = (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error)


def _header_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) from what `Image.open` already read, without decoding pixels
    (PNG's `getexif` would decode them when no eXIf chunk precedes the pixel data); 1 when unknown."""
    try:
        if isinstance(img, TiffImagePlugin.TiffImageFile):
            value = img.tag_v2.get(EXIF_ORIENTATION, 1)
        elif "exif" in img.info:
            exif = Image.Exif()
            exif.load(img.info["exif"])
            value = exif.get(EXIF_ORIENTATION, 1)
        else:
            return 1
        return int(value) if int(value) in range(1, 9) else 1
    except EXIF_ERRORS:
        return 1


def _upright(img: Image.Image, label: str) -> Image.Image:
    """The decoded image turned by its EXIF orientation (`ImageOps.exif_transpose`)."""
    try:
        img.load()  # OSErrors (truncated, corrupt) are handled by read_image
    except (ValueError, SyntaxError, EOFError, struct.error) as exc:  # other decoder complaints
        raise ValueError(f"{label}: not a readable image ({exc})") from exc
    with contextlib.suppress(*EXIF_ERRORS):
        ImageOps.exif_transpose(img, in_place=True)
    return img


def _rgb_pixels(img: Image.Image, label: str) -> np.ndarray:
    """Any decoded Pillow image -> HxWx3 uint8. 16-bit grey (I;16*, and 32-bit I holding 16-bit
    values) is scaled to 8 bits, never clipped; colour modes (L, LA, P, PA, CMYK, RGBA, YCbCr, ...)
    go through Pillow's conversion to RGB, alpha dropped."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        arr = np.asarray(img)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"{label}: 32-bit integer pixels in [{arr.min()}, {arr.max()}]; only 0..65535 "
                "(16-bit) integer images are read"
            )
        # round(v * 255 / 65535) in integers (no ties: 65535 / 255 = 257 is odd)
        return as_rgb_uint8(((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8), label)
    try:
        rgb = img.convert("RGB")
    except ValueError as exc:  # a mode Pillow cannot turn into RGB
        raise ValueError(f"{label}: cannot convert {img.mode} pixels to RGB ({exc})") from exc
    return as_rgb_uint8(np.array(rgb), label)


def read_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Decode an image file or bytes to upright HxWx3 uint8 (EXIF orientation applied), refusing
    bombs (the pixel cap is checked on the header's size, before decoding) and naming the source on
    error: ImageTooLarge over the cap, ValueError otherwise. Reads what Pillow reads (JPEG incl.
    CMYK, PNG incl. 16-bit, TIFF 8/16-bit, WebP, BMP, GIF, ...) in any mode (`_rgb_pixels`)."""
    return _read(source, max_pixels, name, decode=True)


def read_image_size(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> tuple[int, int]:
    """(H, W) of the upright image `read_image` would decode, from the header only (no pixels
    decoded), with the same checks and errors."""
    return _read(source, max_pixels, name, decode=False)


def _read(source: str | Path | bytes, max_pixels: int, name: str | None, decode: bool) -> Any:
    label = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            width, height = img.size
            if _header_orientation(img) in (5, 6, 7, 8):  # stored on its side: upright is turned
                width, height = height, width
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"{label}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            return _rgb_pixels(_upright(img, label), label) if decode else (height, width)
    except FileNotFoundError as exc:
        raise ValueError(f"{label}: no such file") from exc
    except Image.DecompressionBombError as exc:  # PIL refuses to even open it: far over any cap
        raise ImageTooLarge(
            f"{label}: a decompression bomb, far over the limit of {max_pixels} pixels ({exc})"
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{label}: not a readable image ({exc})") from exc


def _finite(arr: np.ndarray, where: str) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{where} contains NaN or inf")


def validate_prompt(prompt: Prompt, image_size: tuple[int, int], index: int = 0) -> None:
    """Raise ValueError naming the prompt and field when it does not fit an image of (H, W)."""
    h, w = image_size
    where = f"prompt {index}"
    if not isinstance(prompt, Prompt):
        raise ValueError(f"{where}: expected a Prompt, got {type(prompt).__name__}")
    if prompt.points is None and prompt.box is None and prompt.mask_logits is None:
        raise ValueError(f"{where} is empty: give points (with labels), a box or mask_logits")
    if (prompt.points is None) != (prompt.labels is None):
        missing = "labels" if prompt.labels is None else "points"
        raise ValueError(f"{where}: points and labels go together; {missing} missing")
    if prompt.points is not None:
        pts, lbl = prompt.points, prompt.labels
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
            raise ValueError(f"{where}.points: expected Nx2 (x, y) with N >= 1, got shape {pts.shape}")
        if lbl.shape != (pts.shape[0],):
            raise ValueError(
                f"{where}.labels: expected shape ({pts.shape[0]},) to match points, got {lbl.shape}"
            )
        _finite(pts, f"{where}.points")
        if not np.issubdtype(lbl.dtype, np.number):
            raise ValueError(f"{where}.labels: must be numbers 1 (positive) or 0 (negative), got {lbl.dtype}")
        bad_labels = sorted({float(v) for v in np.unique(lbl) if v not in (0, 1)})
        if bad_labels:
            raise ValueError(f"{where}.labels: must be 1 (positive) or 0 (negative), got {bad_labels}")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
        if outside.any():
            i = int(np.argmax(outside))
            raise ValueError(
                f"{where}.points[{i}] = ({pts[i, 0]:g}, {pts[i, 1]:g}) lies outside the {w}x{h} image"
            )
    if prompt.box is not None:
        box = prompt.box
        if box.shape != (4,):
            raise ValueError(f"{where}.box: expected 4 numbers (x0, y0, x1, y1), got shape {box.shape}")
        _finite(box, f"{where}.box")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"{where}.box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}): need x0 <= x1 and y0 <= y1")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ValueError(f"{where}.box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    if prompt.mask_logits is not None:
        m = prompt.mask_logits
        if m.shape not in ((1, LOW_RES, LOW_RES), (LOW_RES, LOW_RES)):
            raise ValueError(
                f"{where}.mask_logits: expected 1x{LOW_RES}x{LOW_RES} logits, got shape {m.shape}"
            )
        _finite(m, f"{where}.mask_logits")


def validate_prompts(
    prompts: Sequence[Prompt], image_size: tuple[int, int], max_prompts: int | None = None
) -> None:
    if isinstance(prompts, Prompt):
        raise ValueError("prompts: expected a sequence of Prompt, got a single Prompt (wrap it in a list)")
    if max_prompts is not None and len(prompts) > max_prompts:
        raise ValueError(f"prompts: {len(prompts)} prompts exceed the limit of {max_prompts}")
    for i, p in enumerate(prompts):
        validate_prompt(p, image_size, i)
