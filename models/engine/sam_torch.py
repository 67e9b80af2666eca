"""The PyTorch SAM backend: official segment-anything modules, batched encoder and decoder.

Equal to `SamPredictor` (same resize, normalisation, padding, coordinate transform, prompt
encoder and decoder math) but: several images per encoder call, embeddings cached by content,
many prompts per decoder call through `ManyPromptDecoder`, and masks brought back to the
original size with one precomputed matrix per axis instead of two interpolations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from models.engine.base import (
    DEFAULT_WORKING_SIDE,
    BatchedDecoder,
    cache_namespace,
    cache_torch_dtype,
    stability_score,
    to_cache,
    weights_fingerprint,
)
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.modeling.build import build_sam
from models.engine.modeling.fast_decoder import DEFAULT_CHUNK, ManyPromptDecoder
from models.engine.transforms import ResizeLongestSide
from models.engine.types import Predictions, Prompt

MAX_DECODE_BATCH = 64  # prompts per decoder call; bounds the memory of full-size outputs


@dataclass(frozen=True)
class SamImage:
    """Cached per-image state: the 1x256x64x64 embedding and the sizes needed to undo resizing."""

    embedding: torch.Tensor
    input_size: tuple[int, int]  # (h, w) after the longest side was resized to 1024
    original_size: tuple[int, int]


def _resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """size_out x size_in matrix equal to 1-D bilinear interpolation (align_corners=False)."""
    eye = torch.eye(size_in, dtype=torch.float64)[None, None]
    return F.interpolate(eye, size=(size_out, size_in), mode="bilinear", align_corners=False)[0, 0]


def prompt_side(sam: torch.nn.Module) -> int:
    """The side of SAM's prompt frame: its encoder's input (1024), or, for a model that encodes at
    another size (EfficientViT-SAM: 512), the first of its `image_size` pair."""
    size = getattr(sam, "image_size", None)
    return int(size[0]) if isinstance(size, tuple | list) else int(sam.image_encoder.img_size)


class SamEngine(BatchedDecoder):
    """PromptableSegmenter backed by a PyTorch `Sam` model."""

    def __init__(
        self,
        sam: Sam | torch.nn.Module,
        name: str = "sam",
        device: str | torch.device = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        encoder_batch: int = 4,
        decode_batch: int = MAX_DECODE_BATCH,
        fast_decoder: bool = True,
        decoder_chunk: int = DEFAULT_CHUNK,
        max_prompts: int | None = None,
        working_side: int | None = DEFAULT_WORKING_SIDE,
        cache_dtype: str = "float32",
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts, working_side=working_side)
        self.name = name
        self.device = torch.device(device)
        self.cache_dtype = cache_torch_dtype(cache_dtype)
        self.model = sam.to(self.device).eval()
        self.prompt_side = prompt_side(sam)
        self.transform = ResizeLongestSide(self.prompt_side)
        self.encoder_batch = max(1, encoder_batch)
        self.decode_batch = max(1, decode_batch)
        with torch.inference_mode():
            self._image_pe = sam.prompt_encoder.get_dense_pe()
        self._fast = (
            ManyPromptDecoder(sam.mask_decoder, self._image_pe, chunk=decoder_chunk) if fast_decoder else None
        )
        self._resize_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._namespace = cache_namespace(name, self._fingerprint(), cache_dtype)

    @classmethod
    def from_checkpoint(cls, sam_type: str, checkpoint: str | Path | None, **kwargs) -> SamEngine:
        """Build an official SAM type from a checkpoint path (or `tiny` with seeded weights)."""
        return cls(build_sam(sam_type, checkpoint), name=f"sam-{sam_type}", **kwargs)

    @property
    def namespace(self) -> str:
        return self._namespace

    def _fingerprint(self) -> str:
        """Of the weights, all of them (`weights_fingerprint`): two models never share cache keys."""
        return weights_fingerprint(self.model)

    # -- encoder -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode(self, images: list[np.ndarray]) -> list[SamImage]:
        model = self.model
        prepared, sizes = [], []
        for image in images:
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            sizes.append(tuple(tensor.shape[-2:]))
            prepared.append(model.preprocess(tensor))
        out: list[SamImage] = []
        for start in range(0, len(prepared), self.encoder_batch):
            batch = torch.cat(prepared[start : start + self.encoder_batch])
            features = model.image_encoder(batch)
            self.stats.encoder_calls += 1
            self.stats.images_encoded += batch.shape[0]
            for j in range(batch.shape[0]):
                i = start + j
                out.append(
                    SamImage(to_cache(features[j : j + 1], self.cache_dtype), sizes[i], images[i].shape[:2])
                )
        return out

    def _payload_nbytes(self, payload: SamImage) -> int:
        return payload.embedding.numel() * payload.embedding.element_size()

    # -- decoder -----------------------------------------------------------------------------
    def _postprocess_matrices(self, input_size: tuple[int, int], original_size: tuple[int, int]):
        """Per axis: low-res (256) -> padded 1024 -> crop input_size -> original size, as one matrix."""
        key = (input_size, original_size)
        if key not in self._resize_cache:
            img = self.prompt_side
            low = self.model.prompt_encoder.mask_input_size[0]
            mats = []
            for axis in (0, 1):
                up = _resize_matrix(low, img)[: input_size[axis]]
                mats.append(
                    (_resize_matrix(input_size[axis], original_size[axis]) @ up).float().to(self.device)
                )
            self._resize_cache[key] = (mats[0], mats[1].t().contiguous())
        return self._resize_cache[key]

    @torch.inference_mode()
    def _decode_group_into(
        self, payload: SamImage, prompts: list[Prompt], multimask: bool, out: Predictions, idx: list[int]
    ) -> None:
        low_res, scores = self._decode_group(payload, prompts, multimask)
        out.low_res_logits[idx] = low_res.cpu().numpy()
        out.iou[idx] = scores.cpu().numpy()
        self._upsample_into(payload, low_res, idx, out.masks, out.stability)

    def _decode_group(self, image: SamImage, prompts: list[Prompt], multimask: bool):
        """One decoder call for prompts of one layout. Returns Bx(3|1)x256x256 logits and Bx(3|1) IoU."""
        model, dev = self.model, self.device
        pe = model.prompt_encoder
        bsz = len(prompts)
        points = boxes = None
        if prompts[0].points is not None:
            coords = self.transform.apply_coords(np.stack([p.points for p in prompts]), image.original_size)
            labels = np.stack([p.labels for p in prompts]).astype(np.int64)
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=dev),
                torch.as_tensor(labels, device=dev),
            )
        if prompts[0].box is not None:
            box = self.transform.apply_boxes(np.stack([p.box for p in prompts]), image.original_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=dev)
        if points is None and boxes is None:
            sparse = torch.empty((bsz, 0, pe.embed_dim), device=dev)
        else:
            sparse, _ = pe(points=points, boxes=boxes, masks=None)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        with_mask = [i for i, p in enumerate(prompts) if p.mask_logits is not None]
        if with_mask:
            dense = no_mask.expand(bsz, -1, -1, -1).clone()
            mask_in = torch.as_tensor(
                np.stack([prompts[i].mask_logits.reshape(1, 256, 256) for i in with_mask]), device=dev
            )
            dense[with_mask] = pe.mask_downscaling(mask_in)
        else:
            dense = no_mask
        if self._fast is not None:
            return self._fast(image.embedding.float(), sparse, dense, multimask)
        return model.mask_decoder(
            image_embeddings=image.embedding.float(),
            image_pe=self._image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense.expand(bsz, -1, -1, -1),
            multimask_output=multimask,
        )

    def _upsample_into(
        self,
        image: SamImage,
        low_res: torch.Tensor,
        idx: list[int],
        masks: np.ndarray,
        stability: np.ndarray,
        chunk: int = 8,
    ) -> None:
        """Full-size logits -> thresholded masks and stability scores, a few prompts at a time."""
        rows, cols = self._postprocess_matrices(image.input_size, image.original_size)
        threshold = self.model.mask_threshold
        for s in range(0, len(idx), chunk):
            logits = rows @ low_res[s : s + chunk] @ cols  # b x C x H x W
            part = idx[s : s + chunk]
            masks[part] = (logits > threshold).cpu().numpy()
            stability[part] = stability_score(logits, threshold).cpu().numpy()
