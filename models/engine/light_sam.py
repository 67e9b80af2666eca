"""A light SAM for edge devices: EfficientViT-SAM (`efficientsam` package, Apache-2.0) behind the
torch SAM backend (`backend: light`, `sam_type: efficientvit-sam-l0 | l1 | l2`).

EfficientViT-SAM keeps SAM's prompt encoder and mask decoder, so prompts, low-res logits (SAM's
padded 256 frame) and masks go through `SamEngine` unchanged; only the image side differs: the
image's long side is resized to 512 (not 1024), normalised with SAM's pixel statistics and padded
to 512x512, and an EfficientViT encoder turns it into the same 1x256x64x64 embedding. The prompt
frame stays 1024 (`prompt_side`), exactly as `EfficientViTSamPredictor` keeps the two apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.config import lookup
from models.engine.base import to_cache
from models.engine.sam_torch import SamEngine, SamImage
from models.engine.transforms import ResizeLongestSide

LIGHT_TYPES = {
    "efficientvit-sam-l0": "efficientvit-sam-l0",
    "efficientvit-sam-l1": "efficientvit-sam-l1",
    "efficientvit-sam-l2": "efficientvit-sam-l2",
}
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's, in 0..255
PIXEL_STD = (58.395, 57.12, 57.375)


def build_light_sam(
    sam_type: str, checkpoint: str | Path | None = None, random_seed: int = 0
) -> torch.nn.Module:
    """EfficientViT-SAM `sam_type` in eval mode: weights from `checkpoint` (the released state dict),
    else random weights seeded with `random_seed`."""
    name = lookup(LIGHT_TYPES, sam_type, "light SAM type")
    try:
        from efficientsam.sam_model_zoo import create_efficientvit_sam_model
    except ImportError as exc:
        from models.runtime.deps import MissingDependency

        raise MissingDependency(
            "the light SAM needs efficientsam, which is not installed: pip install --no-deps efficientsam==1.0.0"
        ) from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        model = create_efficientvit_sam_model(name, pretrained=False)
    if checkpoint is not None:
        from models.engine.modeling.build import CheckpointError

        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"light SAM checkpoint {path} is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for damaged, foreign or mismatched files
            raise CheckpointError(
                f"light SAM checkpoint {path} does not load into {sam_type} ({exc})"
            ) from None
    return model.eval()


class LightSamEngine(SamEngine):
    """SamEngine with EfficientViT-SAM's image side (512 input, 1024 prompt frame)."""

    def __init__(self, sam: torch.nn.Module, **kwargs) -> None:
        super().__init__(sam, **kwargs)
        self.encoder_side = int(sam.image_size[1])
        self._resize = ResizeLongestSide(self.encoder_side)
        self._mean = torch.tensor(PIXEL_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(PIXEL_STD, device=self.device).view(3, 1, 1)

    @classmethod
    def from_checkpoint(cls, sam_type: str, checkpoint: str | Path | None, **kwargs) -> LightSamEngine:
        return cls(build_light_sam(sam_type, checkpoint), name=sam_type, **kwargs)

    @torch.inference_mode()
    def _encode(self, images: list[np.ndarray]) -> list[SamImage]:
        side, prepared = self.encoder_side, []
        for image in images:
            small = (
                torch.as_tensor(self._resize.apply_image(image), device=self.device).permute(2, 0, 1).float()
            )
            small = (small - self._mean) / self._std
            h, w = small.shape[-2:]
            prepared.append(F.pad(small, (0, side - w, 0, side - h))[None])
        out: list[SamImage] = []
        for start in range(0, len(prepared), self.encoder_batch):
            batch = torch.cat(prepared[start : start + self.encoder_batch])
            features = self.model.image_encoder(batch)
            self.stats.encoder_calls += 1
            self.stats.images_encoded += batch.shape[0]
            for j in range(batch.shape[0]):
                original = images[start + j].shape[:2]
                frame = ResizeLongestSide.get_preprocess_shape(*original, self.prompt_side)
                out.append(SamImage(to_cache(features[j : j + 1], self.cache_dtype), frame, original))
        return out
