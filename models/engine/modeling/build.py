"""Build Segment Anything models by official type and load checkpoints defensively.

One private builder (`_build_sam`) with thin named wrappers and a plain dict registry, as in
segment-anything itself. The modeling classes are segment-anything's own, so a model built here
is exactly the official architecture and loads official checkpoints (`sam_vit_b_01ec64.pth` ...).

`tiny` is not an official model: a small ViT encoder (same 1024 input, same 256x64x64 embedding,
same prompt encoder and mask decoder) with seeded random weights, used by tests and benchmarks so
that the whole pipeline runs in seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from models.config import lookup
from models.io import missing_file, unreadable

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
PATCH_SIZE = 16

# Official release file names end in the first hex digits of the file's sha256.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "sam_vit_h_4b8939.pth": "vit_h",
    "sam_vit_l_0b3195.pth": "vit_l",
    "sam_vit_b_01ec64.pth": "vit_b",
}
_OFFICIAL_NAME = re.compile(r"^sam_(vit_[bhl])_([0-9a-f]{6})\.pth$")

# Encoder width -> official type; used to tell the user what a mismatching file probably is.
_TYPE_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the requested architecture."""


def _build_sam(
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: list[int],
    checkpoint: str | Path | None = None,
    *,
    arch: str,
    verify_hash: bool = True,
) -> Sam:
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=encoder_global_attn_indexes,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        state_dict = load_state_dict(checkpoint, arch=arch, verify_hash=verify_hash)
        _load_into(sam, state_dict, Path(checkpoint), arch)
    return sam


def build_sam_vit_h(checkpoint: str | Path | None = None, verify_hash: bool = True) -> Sam:
    return _build_sam(1280, 32, 16, [7, 15, 23, 31], checkpoint, arch="vit_h", verify_hash=verify_hash)


def build_sam_vit_l(checkpoint: str | Path | None = None, verify_hash: bool = True) -> Sam:
    return _build_sam(1024, 24, 16, [5, 11, 17, 23], checkpoint, arch="vit_l", verify_hash=verify_hash)


def build_sam_vit_b(checkpoint: str | Path | None = None, verify_hash: bool = True) -> Sam:
    return _build_sam(768, 12, 12, [2, 5, 8, 11], checkpoint, arch="vit_b", verify_hash=verify_hash)


def build_sam_tiny(checkpoint: str | Path | None = None, verify_hash: bool = True, seed: int = 0) -> Sam:
    """A 2-block, 64-wide ViT encoder with SAM's real decoder; seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_sam(64, 2, 2, [1], checkpoint, arch="tiny", verify_hash=verify_hash)


# SAM type -> builder (checkpoint=None, verify_hash=True) -> Sam: named and called as segment_anything's
# own registry (which also maps "default" to vit_h; this one does not); `build_sam` reads it via `lookup`
sam_model_registry: dict[str, Callable[..., Sam]] = {
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "tiny": build_sam_tiny,
}


def build_sam(sam_type: str, checkpoint: str | Path | None = None, verify_hash: bool = True) -> Sam:
    """Build SAM of an official type (vit_b, vit_l, vit_h) or `tiny`, optionally from a checkpoint."""
    return lookup(sam_model_registry, sam_type, "SAM type")(checkpoint, verify_hash=verify_hash)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_official_name(path: Path, arch: str) -> None:
    """For official file names, check the type in the name and the sha256 prefix it promises."""
    match = _OFFICIAL_NAME.match(path.name)
    if match is None:
        return
    name_arch, prefix = match.groups()
    if arch != "tiny" and name_arch != arch:
        raise CheckpointError(
            f"{path}: the file name says SAM {name_arch} but SAM {arch} was requested "
            f"(set the SAM type to {name_arch}, or pass the {arch} checkpoint)"
        )
    digest = sha256_of(path)
    if not digest.startswith(prefix):
        raise CheckpointError(
            f"{path}: sha256 {digest[:12]}... does not start with {prefix} as the official file name "
            "promises; the download is truncated or corrupt (size "
            f"{path.stat().st_size} bytes). Download it again."
        )


def load_state_dict(
    checkpoint: str | Path, arch: str = "unknown", verify_hash: bool = True
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict, with errors that name the file."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(missing_file(path, "checkpoint"))
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty")
    if verify_hash:
        verify_official_name(path, arch)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (pickle, zip, EOF, runtime)
        raise CheckpointError(unreadable(path, "checkpoint", exc)) from exc
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(obj)


def guess_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The official type a SAM state dict was made for, from its encoder width and depth."""
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4:
        return None
    width = int(pos.shape[-1])
    if width in _TYPE_BY_WIDTH:
        return _TYPE_BY_WIDTH[width]
    return "tiny" if width == 64 else f"an unknown ViT of width {width}"


def _load_into(sam: Sam, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        guessed = guess_type(state_dict)
        looks = f"; it looks like a {guessed} checkpoint" if guessed and guessed != arch else ""
        if not any(k.startswith("image_encoder.") for k in state_dict):
            looks = "; it does not look like a SAM checkpoint at all"
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: does not fit SAM {arch}: " + ", ".join(parts) + looks)
    sam.load_state_dict(state_dict)
