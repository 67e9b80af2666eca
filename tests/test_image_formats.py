"""Images users send, built with PIL in a temporary folder: `read_image` decodes WebP, TIFF (8 and
16-bit), 16-bit PNG, L, LA, P, CMYK JPEG, RGBA and EXIF-rotated files to upright HxWx3 uint8, scales
16 bits to 8 (never clips), and checks the pixel cap on the header before decoding."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.engine.validation import ImageTooLarge, read_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (30, 50, 3), dtype=np.uint8)
# 16-bit samples and what scaling them to 8 bits gives (round(v * 255 / 65535)); clipping gives 255
WIDE = np.array([[0, 1000, 257 * 100, 32768, 65535]], np.uint16)
WIDE_8 = np.array([[0, 4, 100, 128, 255]], np.uint8)
# EXIF orientation -> the upright pixels of `arr` (the TIFF / EXIF convention)
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def grey(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def check(image: np.ndarray, expected: np.ndarray, atol: int = 0) -> None:
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= atol


def blocks(colours: list[tuple[int, ...]], side: int = 16) -> np.ndarray:
    """One side x side block per colour in a row (JPEG-friendly: flat 8x8-aligned blocks)."""
    return np.concatenate([np.full((side, side, len(c)), c, np.uint8) for c in colours], axis=1)


def png_rgb16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit RGB PNG written by hand (PIL writes no 16-bit colour PNGs)."""
    h, w, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_webp_lossless_and_with_alpha(tmp_path) -> None:
    Image.fromarray(RGB).save(tmp_path / "a.webp", lossless=True)
    check(read_image(tmp_path / "a.webp"), RGB)
    rgba = np.dstack([RGB, np.full(RGB.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "b.webp", lossless=True, exact=True)
    check(read_image(tmp_path / "b.webp"), RGB)  # alpha dropped, colour kept
    check(read_image((tmp_path / "a.webp").read_bytes()), RGB)


def test_tiff_8_and_16_bit(tmp_path) -> None:
    Image.fromarray(RGB).save(tmp_path / "rgb.tif")
    check(read_image(tmp_path / "rgb.tif"), RGB)
    Image.fromarray(RGB).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    check(read_image(tmp_path / "lzw.tif"), RGB)
    for name, pixels in (("little.tif", WIDE), ("big.tif", WIDE.astype(">u2"))):
        Image.fromarray(pixels).save(tmp_path / name)
        check(read_image(tmp_path / name), grey(WIDE_8))


def test_32_bit_integer_tiff_is_scaled_as_16_bit_not_stretched(tmp_path) -> None:
    Image.fromarray(np.array([[0, 500, 1000]], np.int32)).save(tmp_path / "i.tif")
    check(read_image(tmp_path / "i.tif"), grey(np.array([[0, 2, 4]], np.uint8)))
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(ValueError, match=r"big\.tif"):
        read_image(tmp_path / "big.tif")


def test_16_bit_png_grey_and_colour(tmp_path) -> None:
    Image.fromarray(WIDE).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    check(read_image(tmp_path / "g16.png"), grey(WIDE_8))
    colour = np.stack([WIDE[0], WIDE[0][::-1], np.full(5, 257 * 7, np.uint16)], axis=-1)[None]
    png_rgb16(tmp_path / "rgb16.png", colour)
    expected = np.stack([WIDE_8[0], WIDE_8[0][::-1], np.full(5, 7, np.uint8)], axis=-1)[None]
    check(read_image(tmp_path / "rgb16.png"), expected, atol=1)  # high byte or scaled: within 1


def test_grey_grey_alpha_palette_and_rgba(tmp_path) -> None:
    lum = RGB[..., 0]
    Image.fromarray(lum).save(tmp_path / "l.png")
    check(read_image(tmp_path / "l.png"), grey(lum))
    Image.fromarray(np.dstack([lum, RGB[..., 1]])).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    check(read_image(tmp_path / "la.png"), grey(lum))
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [250, 250, 250]], np.uint8)
    index = RNG.integers(0, 4, (20, 30), dtype=np.uint8)
    p = Image.fromarray(index, mode="P")
    p.putpalette(palette.flatten().tolist())
    p.save(tmp_path / "p.png")
    p.save(tmp_path / "p.gif")
    for name in ("p.png", "p.gif"):
        check(read_image(tmp_path / name), palette[index])
    Image.fromarray(np.dstack([RGB, RGB[..., 2]])).save(tmp_path / "rgba.png")
    check(read_image(tmp_path / "rgba.png"), RGB)


def test_cmyk_jpeg_pure_colours(tmp_path) -> None:
    cmyk = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]
    rgb = [(0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 0), (255, 255, 255)]
    Image.fromarray(blocks(cmyk), mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == (16, 80, 3) and image.dtype == np.uint8
    for i, colour in enumerate(rgb):
        assert np.abs(image[8, 16 * i + 8].astype(int) - colour).max() <= 8, (i, image[8, 16 * i + 8])


def test_exif_rotated_jpeg_comes_out_upright(tmp_path) -> None:
    picture = np.concatenate(
        [blocks([(255, 0, 0), (0, 255, 0), (0, 0, 255)]), blocks([(255, 255, 0), (0, 0, 0), (255, 255, 255)])]
    )  # 32x48, every corner a different colour
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(picture).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    image, expected = read_image(tmp_path / "rot.jpg"), np.rot90(picture, -1)
    assert image.shape == expected.shape == (48, 32, 3) and image.dtype == np.uint8
    centres = np.ix_([8, 24, 40], [8, 24])  # one pixel inside each flat block, upright
    assert np.abs(image[centres].astype(int) - expected[centres]).max() <= 12


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("exif", [b"Exif\x00\x00junk", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05"])
def test_damaged_exif_gives_the_pixels_as_stored(tmp_path, exif: bytes) -> None:
    Image.fromarray(RGB).save(tmp_path / "bad.webp", lossless=True, exif=exif)
    check(read_image(tmp_path / "bad.webp"), RGB)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
@pytest.mark.parametrize("fmt", ["png", "webp", "tiff"])
def test_every_exif_orientation(tmp_path, orientation: int, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o.{fmt}"
    Image.fromarray(RGB).save(path, exif=exif, **({"lossless": True} if fmt == "webp" else {}))
    check(read_image(path), np.ascontiguousarray(UPRIGHT[orientation](RGB)))


def test_pixel_cap_uses_the_upright_size_before_decoding(tmp_path, monkeypatch) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(tmp_path / "rot.jpg", exif=exif)  # stored 50x30, upright 30x50
    Image.fromarray(WIDE).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "rot.jpg", max_pixels=1500).shape == (50, 30, 3)

    def no_decoding(self):
        raise AssertionError("pixels decoded before the cap was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLarge, match=r"rot\.jpg: 30x50 = 1500 pixels exceeds the limit of 1499"):
        read_image(tmp_path / "rot.jpg", max_pixels=1499)
    with pytest.raises(ImageTooLarge, match="image bytes: 5x1 = 5 pixels"):
        read_image((tmp_path / "g16.png").read_bytes(), max_pixels=4)


def test_errors_name_the_source(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"missing\.png: no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPjunk")
    with pytest.raises(ValueError, match=r"junk\.webp: not a readable image"):
        read_image(tmp_path / "junk.webp")
    Image.fromarray(RGB).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    with pytest.raises(ValueError, match=r"upload\.png: not a readable image"):
        read_image(data[: len(data) // 2], name="upload.png")
