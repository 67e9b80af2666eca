"""The promptable-segmenter engine: one interface, several backends (torch SAM, ONNX Runtime,
TensorRT, Triton, and the weight-free classical prior), an embedding cache and a registry by name."""

from models.engine.base import CachedSegmenter, stability_score
from models.engine.cache import EmbeddingCache, content_key
from models.engine.factory import ENGINE_BACKENDS, EngineConfig, build_engine
from models.engine.types import EngineStats, ImageHandle, Predictions, Prompt, PromptableSegmenter
from models.engine.validation import as_rgb_uint8, read_image, validate_prompt, validate_prompts

__all__ = [
    "ENGINE_BACKENDS",
    "CachedSegmenter",
    "EmbeddingCache",
    "EngineConfig",
    "EngineStats",
    "ImageHandle",
    "Predictions",
    "Prompt",
    "PromptableSegmenter",
    "as_rgb_uint8",
    "build_engine",
    "content_key",
    "read_image",
    "stability_score",
    "validate_prompt",
    "validate_prompts",
]
