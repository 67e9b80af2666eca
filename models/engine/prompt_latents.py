"""WISH's prompt latents Z (paper 002, Eq. 9): SAM's prompt encoder applied to each point or box.

One point gives SAM's two sparse tokens (the point's, and the "no box" padding token SAM adds to
point-only prompts); one box gives its two corner tokens. Either way Z is 2 x 256 = 512 numbers,
so points and boxes share one latent space and one prompt head.

The encoder is the configured SAM checkpoint's own when the engine is a torch SAM (SAM 1 or the light
SAM, whose prompt encoder is SAM's in SAM's 1024 frame); otherwise (SAM 2.1, whose frame is stretched, the
classical prior, exported engines) a seeded random `PromptEncoder` of SAM's architecture, and
`source` says so. A random encoder still maps nearby prompts to nearby latents (its positional
encoding is random Fourier features, which is also what SAM's checkpoint holds: a fixed Gaussian
matrix), but its learned point and corner embeddings are random.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from segment_anything.modeling import PromptEncoder

from models.engine.transforms import ResizeLongestSide

SAM_INPUT = 1024  # SAM's input side; prompts are given in that frame
EMBED_DIM = 256


def is_sam_prompt_encoder(encoder: Any) -> bool:
    """SAM's prompt encoder, or a copy of it that gives the same tokens in SAM's 1024 frame
    (EfficientViT-SAM ships its own class); SAM 2's (`sam_prompt_encoder`, a stretched frame) is not."""
    if isinstance(encoder, PromptEncoder):
        return True
    return (
        all(hasattr(encoder, a) for a in ("point_embeddings", "not_a_point_embed", "pe_layer"))
        and tuple(getattr(encoder, "input_image_size", ())) == (SAM_INPUT, SAM_INPUT)
        and getattr(encoder, "embed_dim", None) == EMBED_DIM
    )


class PromptLatents:
    """Maps points / boxes in original image pixels to Nx512 prompt latents."""

    def __init__(self, encoder: PromptEncoder, source: str) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        self.source = source
        self.transform = ResizeLongestSide(SAM_INPUT)

    @classmethod
    def seeded(cls, seed: int = 0) -> PromptLatents:
        """SAM ViT's prompt encoder architecture with seeded random weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = PromptEncoder(
                embed_dim=EMBED_DIM,
                image_embedding_size=(SAM_INPUT // 16, SAM_INPUT // 16),
                input_image_size=(SAM_INPUT, SAM_INPUT),
                mask_in_chans=16,
            )
            # nn.Embedding starts N(0, 1) already; the Fourier matrix is N(0, 1) as in SAM
        return cls(encoder, f"seeded random SAM prompt encoder (seed {seed})")

    @classmethod
    def for_engine(cls, engine: Any, seed: int = 0) -> PromptLatents:
        """The engine's own prompt encoder when it has one (torch SAM), else `seeded(seed)`."""
        model = getattr(engine, "model", None)
        encoder = getattr(model, "prompt_encoder", None)
        if is_sam_prompt_encoder(encoder):
            return cls(encoder, f"prompt encoder of {getattr(engine, 'name', 'SAM')}")
        return cls.seeded(seed)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights live (a CUDA SAM engine's encoder is on its GPU)."""
        return self.encoder.point_embeddings[0].weight.device

    @torch.no_grad()
    def points(self, points: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Nx2 (x, y) positive points in an image of `size` (H, W) -> Nx512 fp32 on the CPU, one
        latent per point (computed on the encoder's device; targets are kept in host memory)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        coords = torch.as_tensor(
            self.transform.apply_coords(points, size), dtype=torch.float32, device=self.device
        )[:, None]
        labels = torch.ones(len(points), 1, dtype=torch.int64, device=self.device)
        sparse, _ = self.encoder(points=(coords, labels), boxes=None, masks=None)
        return sparse.flatten(1).float().cpu()

    @torch.no_grad()
    def boxes(self, boxes: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """Nx4 (x0, y0, x1, y1) boxes -> Nx512 fp32 on the CPU (computed on the encoder's device)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        coords = torch.as_tensor(
            self.transform.apply_boxes(boxes, size), dtype=torch.float32, device=self.device
        )
        sparse, _ = self.encoder(points=None, boxes=coords, masks=None)
        return sparse.flatten(1).float().cpu()
