"""Label Studio's brush RLE (`models.labels.brush`): a hand-worked encoding, round trips, runs over
the widest field, and damaged input. The SDK's own codec is compared in tests/test_brush_sdk.py."""

from __future__ import annotations

import numpy as np
import pytest

from models.labels.brush import brush_result, decode_brush, decode_brush_values, encode_brush


def test_one_pixel_by_hand() -> None:
    """A 1x1 mask is 4 values of 255: header (4 in 32 bits; word size 8 - 1 in 5 bits; widths 3, 4,
    8, 16 less one in 4 bits each) then one run (flag 1, width 0, count 4 - 1 in 3 bits, word)."""
    bits = f"{4:032b}" + "00111" + "0010" + "0011" + "0111" + "1111" + "1" + "00" + "011" + "11111111"
    bits += "0" * (-len(bits) % 8)
    expected = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert encode_brush(np.array([[True]])) == expected == [0, 0, 0, 4, 57, 27, 252, 127, 224]


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 48), (500, 300)])
def test_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.7
    mask[: shape[0] // 2, : shape[1] // 2] = True  # long runs beside short ones
    assert np.array_equal(decode_brush(encode_brush(mask), *shape), mask)


def test_runs_longer_than_the_widest_field_are_split() -> None:
    mask = np.ones((300, 300), bool)  # 360000 values: six chunks of at most 65536
    values = decode_brush_values(encode_brush(mask))
    assert values.size == 360000 and (values == 255).all()


def test_literal_chunks_decode() -> None:
    """Label Studio's encoder also writes literal chunks (flag 0): 3 words 1, 2, 3 by hand."""
    bits = f"{3:032b}" + "00111" + "0010" + "0011" + "0111" + "1111" + "0" + "00" + "010"
    bits += "".join(f"{v:08b}" for v in (1, 2, 3))
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_brush_values(data).tolist() == [1, 2, 3]


def test_damaged_input_is_a_value_error() -> None:
    rle = encode_brush(np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="ends early"):
        decode_brush_values(rle[:6])
    with pytest.raises(ValueError, match="holds 400 8-bit values, not 200 bytes"):
        decode_brush(rle, 5, 10)
    # a bomb: a few bytes whose header claims 2**32 - 1 values are refused before any allocation
    bits = f"{2**32 - 1:032b}" + "00111" + "0010" + "0011" + "0111" + "1111" + "1" + "11" + "1" * 16 + "0" * 8
    bomb = [int(bits[i : i + 8], 2) for i in range(0, len(bits) - len(bits) % 8, 8)]
    with pytest.raises(ValueError, match="holds 4294967295 8-bit values, not 400 bytes"):
        decode_brush(bomb, 10, 10)
    with pytest.raises(ValueError, match="list of byte values"):
        decode_brush([300, 1], 10, 10)
    empty = encode_brush(np.zeros((0, 5), bool))
    assert decode_brush_values(empty).size == 0


def test_brush_result_shape() -> None:
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    r = brush_result(mask, "car", "tag", "image", 0.87654321)
    assert (r["type"], r["from_name"], r["to_name"]) == ("brushlabels", "tag", "image")
    assert (r["original_width"], r["original_height"], r["score"]) == (6, 4, 0.876543)
    assert r["value"]["brushlabels"] == ["car"] and r["value"]["format"] == "rle"
    assert np.array_equal(decode_brush(r["value"]["rle"], 4, 6), mask)
    assert brush_result(mask, "car", "tag", "image")["id"] == r["id"]  # the same answer, the same id
    assert brush_result(mask, "bus", "tag", "image")["id"] != r["id"]
