"""Label Studio's brush masks: its RLE codec and the `brushlabels` result shape.

Label Studio stores a brush mask as an RGBA image (4 bytes per pixel, the mask in every channel)
packed with thi.ng's `rle-pack` bit format, MSB first:

- a header: the value count (32 bits), the word size - 1 (5 bits), then four run-length field
  widths - 1 (4 bits each; Label Studio writes 3, 4, 8 and 16);
- then chunks: a flag bit (1 = a run of one repeated word, 0 = that many literal words), 2 bits
  choosing one of the four widths, the count - 1 in that many bits, then the word (a run) or the
  words (literals).

The codec is ours because `label-studio-sdk` pins numpy and opencv below what this project uses
(a `pip install` of it downgrades both); the integration tier checks it against the SDK's
`decode_rle` through a real Label Studio server. Encoding writes runs only (a mask repeated over 4
channels has no run shorter than 4), in the widest field a run needs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

RLE_WIDTHS = (3, 4, 8, 16)  # bits of a chunk's count - 1, as Label Studio writes them
WORD_BITS = 8


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """Fields (value, bit width), MSB first, packed into bytes (zero-padded at the end)."""
    widths = widths.astype(np.int64)
    owner = np.repeat(np.arange(len(values)), widths)
    first = np.cumsum(widths) - widths
    shift = widths[owner] - 1 - (np.arange(int(widths.sum())) - first[owner])
    bits = ((values.astype(np.uint64)[owner] >> shift.astype(np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tolist()


def encode_brush(mask: np.ndarray) -> list[int]:
    """HxW bool/0-1 mask -> Label Studio brush RLE (a list of byte values). Runs are found on the
    mask and stretched 4x (its 4 channels), never on a 4x copy of it."""
    flat = np.asarray(mask).ravel() > 0
    n = 4 * flat.size
    if n >= 2**32:
        raise ValueError(f"mask of {flat.size} pixels is too large for Label Studio's brush format")
    if flat.size == 0:
        return _pack_fields(
            np.array([0, WORD_BITS - 1, *(w - 1 for w in RLE_WIDTHS)]), np.array([32, 5, 4, 4, 4, 4])
        )
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = 4 * np.diff(np.concatenate([starts, [flat.size]]))
    words = np.where(flat[starts], 255, 0)
    longest = 1 << RLE_WIDTHS[-1]
    pieces = -(-lengths // longest)  # runs longer than the widest field split into several chunks
    run_words = np.repeat(words, pieces)
    run_lengths = np.full(int(pieces.sum()), longest, np.int64)
    last = np.cumsum(pieces) - 1
    run_lengths[last] = lengths - (pieces - 1) * longest
    width_id = np.searchsorted(np.array([1 << w for w in RLE_WIDTHS]), run_lengths)
    header_values = [n, WORD_BITS - 1, *(w - 1 for w in RLE_WIDTHS)]
    header_widths = [32, 5, 4, 4, 4, 4]
    k = len(run_lengths)
    chunk_values = np.stack([np.ones(k, np.int64), width_id, run_lengths - 1, run_words.astype(np.int64)], 1)
    chunk_widths = np.stack(
        [np.ones(k, np.int64), np.full(k, 2), np.array(RLE_WIDTHS)[width_id], np.full(k, WORD_BITS)], 1
    )
    values = np.concatenate([np.array(header_values, np.int64), chunk_values.ravel()])
    widths = np.concatenate([np.array(header_widths, np.int64), chunk_widths.ravel()])
    return _pack_fields(values, widths)


def decode_brush_values(rle: list[int] | bytes, expected: int | None = None) -> np.ndarray:
    """Label Studio brush RLE -> the flat word array it encodes (RGBA bytes for a brush mask). With
    `expected`, a header that claims another count or a word size other than 8 is refused before
    anything is allocated."""
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise ValueError("brush RLE must be a list of byte values (0..255)") from None
    bits = "".join(f"{b:08b}" for b in data)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError("brush RLE ends early")
        value = int(bits[pos : pos + n], 2)
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    if expected is not None and (num != expected or word != WORD_BITS):
        raise ValueError(f"brush RLE holds {num} {word}-bit values, not {expected} bytes")
    dtype = np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32
    if num > 8 * len(data) * (1 << max(widths)):  # more values than the bits could describe
        raise ValueError(f"brush RLE claims {num} values in {len(data)} bytes")
    out = np.zeros(num, dtype)
    i = 0
    while i < num:
        repeated = read(1)
        j = min(num, i + 1 + read(widths[read(2)]))
        if repeated:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out


def decode_brush(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> HxW bool (the alpha channel above 127, as Label Studio draws it)."""
    values = decode_brush_values(rle, expected=height * width * 4)
    return values.reshape(height, width, 4)[:, :, 3] > 127


def brush_result(
    mask: np.ndarray,
    label: str,
    from_name: str,
    to_name: str,
    score: float | None = None,
) -> dict[str, Any]:
    """One Label Studio `brushlabels` result for an HxW mask on `label`."""
    h, w = mask.shape
    rle = encode_brush(mask)
    # an id from the content, so that the same answer is written the same way (resume, diffs)
    digest = hashlib.sha1(f"{from_name}/{to_name}/{label}/{w}x{h}/".encode() + bytes(rle)).hexdigest()
    result: dict[str, Any] = {
        "id": digest[:10],
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }
    if score is not None:
        result["score"] = round(float(score), 6)
    return result
