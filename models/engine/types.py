"""The promptable-segmenter contract shared by every backend (torch SAM, classical prior, ONNX, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

LOW_RES = 256  # SAM's low-res mask side; mask_logits inputs and outputs use it


@dataclass(frozen=True)
class Prompt:
    """One prompt; coordinates are ORIGINAL image pixels (x, y).

    points: Nx2 float, labels: N int (1 positive, 0 negative), box: 4 float (x0, y0, x1, y1),
    mask_logits: 1x256x256 low-res logits in the engine's frame: from an earlier prediction
    (`Predictions.low_res_logits`) or a mask (`models.engine.lowres.engine_mask_logits`).
    Any non-empty combination is allowed.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Normalise array types once so every backend sees the same dtypes.
        if self.points is not None:
            object.__setattr__(self, "points", np.asarray(self.points, dtype=np.float64))
        if self.labels is not None:
            object.__setattr__(self, "labels", np.asarray(self.labels))
        if self.box is not None:
            object.__setattr__(self, "box", np.asarray(self.box, dtype=np.float64))
        if self.mask_logits is not None:
            object.__setattr__(self, "mask_logits", np.asarray(self.mask_logits, dtype=np.float32))

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else int(self.points.shape[0])


@dataclass
class Predictions:
    """Per-prompt outputs. P prompts, C candidates (3 with multimask, else 1).

    masks: PxCxHxW bool at original resolution; iou: PxC predicted IoU; stability: PxC
    stability score; low_res_logits: PxCx256x256 float32, feed one back as `Prompt.mask_logits`.
    """

    masks: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    low_res_logits: np.ndarray

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def zeros(
        cls, count: int, image_size: tuple[int, int], multimask: bool, logit: float = 0.0
    ) -> Predictions:
        """Arrays for `count` prompts, to be filled by a backend: empty masks, zero scores, low-res
        logits `logit` everywhere."""
        c = 3 if multimask else 1
        h, w = image_size
        return cls(
            np.zeros((count, c, h, w), bool),
            np.zeros((count, c), np.float32),
            np.zeros((count, c), np.float32),
            np.full((count, c, LOW_RES, LOW_RES), logit, np.float32),
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], multimask: bool) -> Predictions:
        """No prompts: zero-length arrays with the right trailing shapes."""
        return cls.zeros(0, image_size, multimask)


@dataclass(frozen=True)
class ImageHandle:
    """An embedded image. `key` is the content hash (also the service's image_id)."""

    key: str
    original_size: tuple[int, int]  # (H, W)
    backend: str
    payload: Any = field(default=None, repr=False, compare=False)
    # the cache space it was embedded in (model and working side, `CachedSegmenter.cache_space`):
    # an engine refuses a handle of another model, even one with its name ("" = not recorded)
    space: str = field(default="", compare=False)


@dataclass
class EngineStats:
    """Counters that prove caching and batching (tests and benchmarks read them)."""

    encoder_calls: int = 0
    images_encoded: int = 0
    decoder_calls: int = 0
    prompts_decoded: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@runtime_checkable
class PromptableSegmenter(Protocol):
    """What SAM is, stated so that every backend can honour it."""

    name: str
    stats: EngineStats

    def embed(self, images: Sequence[np.ndarray]) -> list[ImageHandle]:
        """Embed HxWx3 images (converted and validated) in as few encoder calls as possible."""
        ...

    def predict(
        self, image: ImageHandle | np.ndarray, prompts: Sequence[Prompt], multimask: bool = True
    ) -> Predictions:
        """Masks for many prompts on one image in batched decoder calls."""
        ...

    def lookup(self, key: str) -> ImageHandle | None:
        """The cached handle for an image_id, or None when it is not (or no longer) cached."""
        ...
