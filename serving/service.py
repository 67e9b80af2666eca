"""The BentoML service: `bentoml serve serving.service:SegmentationService`.

Configuration comes from the environment (see `models.engine.EngineConfig.from_env`):
SESAM_BACKEND (auto|classical|torch), SESAM_SAM_TYPE, SESAM_SAM_CHECKPOINT, SESAM_DEVICE,
SESAM_CACHE_BYTES, SESAM_MAX_PROMPTS; SESAM_MAX_IMAGE_PIXELS caps decoded image size.
With no checkpoint configured the weight-free classical prior answers (it is not SAM).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated, Literal

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from models.engine import EngineConfig, Prompt, build_engine, read_image
from models.engine.validation import DEFAULT_MAX_PIXELS
from serving.codec import encode_mask

DEFAULT_MAX_PROMPTS = 256


class PromptIn(BaseModel):
    """One prompt in original-image pixels: points [[x, y], ...] with labels (1 fg, 0 bg) and/or a box."""

    points: list[tuple[float, float]] | None = Field(default=None, examples=[[[240.0, 180.0]]])
    labels: list[int] | None = Field(default=None, examples=[[1]])
    box: tuple[float, float, float, float] | None = Field(default=None, examples=[None])

    def to_prompt(self) -> Prompt:
        points = None if self.points is None else np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        labels = None if self.labels is None else np.asarray(self.labels)
        box = None if self.box is None else np.asarray(self.box, dtype=np.float64)
        return Prompt(points=points, labels=labels, box=box)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"environment {name}={raw!r} is not an integer") from exc


@bentoml.service(name="sesam", traffic={"timeout": 300})
class SegmentationService:
    """Promptable segmentation over HTTP, backed by the engine (classical prior or SAM)."""

    def __init__(self) -> None:
        config = EngineConfig.from_env()
        if config.max_prompts is None:
            config.max_prompts = DEFAULT_MAX_PROMPTS
        self.config = config
        self.max_pixels = _env_int("SESAM_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)
        self.engine = build_engine(config)
        self._lock = threading.Lock()  # torch modules and counters are shared; one request computes at a time

    @bentoml.api(route="/predict")
    def predict(
        self,
        image: Annotated[Path, ContentType("image/*")],
        prompts: list[PromptIn],
        multimask: bool = True,
        mask_format: Literal["rle", "png"] = "rle",
    ) -> dict:
        """Masks for each prompt on the image: 3 candidates (1 without multimask) with scores."""
        try:
            pixels = read_image(image, max_pixels=self.max_pixels, name="image")
            converted = [p.to_prompt() for p in prompts]
            with self._lock:
                handle = self.engine.embed([pixels])[0]
                out = self.engine.predict(handle, converted, multimask=multimask)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        h, w = handle.original_size
        return {
            "image_id": handle.key,
            "width": w,
            "height": h,
            "backend": self.engine.name,
            "mask_format": mask_format,
            "predictions": [
                {
                    "masks": [encode_mask(m, mask_format) for m in out.masks[i]],
                    "iou": [round(float(v), 6) for v in out.iou[i]],
                    "stability": [round(float(v), 6) for v in out.stability[i]],
                }
                for i in range(len(out))
            ],
        }

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """Backend, cache and counter state."""
        with self._lock:
            return self.engine.info() | {
                "max_prompts": self.config.max_prompts,
                "max_image_pixels": self.max_pixels,
            }
