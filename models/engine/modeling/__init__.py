"""Segment Anything: official architectures, defensive checkpoint loading, a many-prompt decoder."""

from models.engine.modeling.build import (
    OFFICIAL_CHECKPOINTS,
    CheckpointError,
    build_sam,
    build_sam_tiny,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    load_state_dict,
    sam_model_registry,
)
from models.engine.modeling.fast_decoder import ManyPromptDecoder

__all__ = [
    "OFFICIAL_CHECKPOINTS",
    "CheckpointError",
    "ManyPromptDecoder",
    "build_sam",
    "build_sam_tiny",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "load_state_dict",
    "sam_model_registry",
]
