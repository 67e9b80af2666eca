"""The SAM 2.1 backend (`backend: sam2`): Meta's `sam2` image model behind the engine's contract.

Equal to `SAM2ImagePredictor` (same stretch to 1024x1024 and ImageNet normalisation, same
backbone features with the no-memory embedding, same prompt frame with box corners first and the
padding point SAM 2's prompt encoder appends, same mask decoder with its single-mask stability
fallback and sigmoid IoU, same bilinear upsampling and logit clamp) but: several images per
encoder call, the image embedding and both high-res feature maps cached by content (16 MiB per
image in float32, all counted in the cache budget; 8 MiB with `cache_dtype` float16 or bfloat16,
upcast to float32 for the decoder), and prompts of one layout decoded together.

Low-res logits stay in SAM 2's own frame (the stretched 256x256 image, not SAM 1's padded one),
so a mask fed back is used as SAM 2 made it; `mask_logits` turns a full-size mask into a prompt in
that frame (refinement's mask prompts go through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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
from models.engine.lowres import MASK_LOGIT
from models.engine.types import LOW_RES, Predictions, Prompt

# prompts per decoder call. On CPU SAM 2's decoder does not get cheaper batched (its high-res
# upscaling grows with the batch: 62 ms per click one at a time, 64 in fours, 102 in sixteens on 2
# cores, benchmarks/results/sam_family.md), so one at a time there; on CUDA batches pay
CPU_DECODE_BATCH, CUDA_DECODE_BATCH = 1, 64
LOGIT_CLAMP = 32.0  # SAM2ImagePredictor clamps the low-res logits it hands back to +-32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Sam2Image:
    """Cached per-image state: 1x256x64x64 embedding, 1x32x256x256 and 1x64x128x128 high-res maps."""

    embedding: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]
    original_size: tuple[int, int]


def stretched_mask_logits(mask: np.ndarray, value: float = MASK_LOGIT) -> np.ndarray:
    """HxW bool -> 1x256x256 float32 logits in SAM 2's frame (the image stretched to 256x256):
    +value where at least half of a cell is inside, -value elsewhere."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    small = F.interpolate(t, size=(LOW_RES, LOW_RES), mode="area")[0].numpy()
    return np.where(small >= 0.5, value, -value).astype(np.float32)


class Sam2Engine(BatchedDecoder):
    """PromptableSegmenter backed by a `sam2` SAM2Base image model."""

    stretches = True  # SAM2Transforms: each axis to 1024 on its own

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "sam2",
        device: str | torch.device = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        encoder_batch: int = 2,
        decode_batch: int | None = None,
        max_prompts: int | None = None,
        working_side: int | None = DEFAULT_WORKING_SIDE,
        cache_dtype: str = "float32",
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts, working_side=working_side)
        self.name = name
        self.device = torch.device(device)
        self.cache_dtype = cache_torch_dtype(cache_dtype)
        self.model = model.to(self.device).eval()
        self.encoder_batch = max(1, encoder_batch)
        if decode_batch is None:
            decode_batch = CUDA_DECODE_BATCH if self.device.type == "cuda" else CPU_DECODE_BATCH
        self.decode_batch = max(1, decode_batch)
        side = int(model.image_size)
        self.resolution = side
        self._feature_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            self._image_pe = model.sam_prompt_encoder.get_dense_pe()
        self._namespace = cache_namespace(name, self._fingerprint(), cache_dtype)

    @classmethod
    def from_checkpoint(
        cls, sam_type: str, checkpoint: str | Path | None, sha256: str | None = None, **kwargs
    ) -> Sam2Engine:
        """SAM 2.1 `sam_type` from an official checkpoint (random seeded weights without one)."""
        from models.engine.modeling.sam2_build import build_sam2_model

        return cls(build_sam2_model(sam_type, checkpoint, sha256), name=sam_type, **kwargs)

    @property
    def namespace(self) -> str:
        return self._namespace

    def _fingerprint(self) -> str:
        """Of the weights, all of them (`weights_fingerprint`): two models never share cache keys."""
        return weights_fingerprint(self.model)

    def mask_logits(self, mask: np.ndarray) -> np.ndarray:
        return stretched_mask_logits(mask)

    # -- encoder -----------------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> 1x3xSxS: [0, 1], stretched to the model's side (bilinear, antialiased as
        torchvision's Resize on a tensor), ImageNet-normalised; as SAM2Transforms does."""
        from torchvision.transforms.functional import resize

        t = torch.as_tensor(image, device=self.device).permute(2, 0, 1).float().div(255.0)
        t = resize(t, [self.resolution, self.resolution], antialias=True)[None]
        return (t - self._mean) / self._std

    @torch.inference_mode()
    def _encode(self, images: list[np.ndarray]) -> list[Sam2Image]:
        model, out = self.model, []
        for start in range(0, len(images), self.encoder_batch):
            chunk = images[start : start + self.encoder_batch]
            batch = torch.cat([self._prepare(image) for image in chunk])
            backbone = model.forward_image(batch)
            _, feats, _, _ = model._prepare_backbone_features(backbone)
            if model.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + model.no_mem_embed
            maps = [
                f.permute(1, 2, 0).reshape(len(chunk), -1, *size)
                for f, size in zip(feats, self._feature_sizes, strict=True)
            ]
            self.stats.encoder_calls += 1
            self.stats.images_encoded += len(chunk)
            for j, image in enumerate(chunk):
                out.append(
                    Sam2Image(
                        to_cache(maps[2][j : j + 1], self.cache_dtype),
                        (
                            to_cache(maps[0][j : j + 1], self.cache_dtype),
                            to_cache(maps[1][j : j + 1], self.cache_dtype),
                        ),
                        image.shape[:2],
                    )
                )
        return out

    def _payload_nbytes(self, payload: Sam2Image) -> int:
        tensors = (payload.embedding, *payload.high_res)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- decoder -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode_group_into(
        self, payload: Sam2Image, prompts: list[Prompt], multimask: bool, out: Predictions, idx: list[int]
    ) -> None:
        low_res, scores = self._decode_group(payload, prompts, multimask)
        # as the predictor: masks from the raw logits, the low-res logits handed back clamped
        out.low_res_logits[idx] = low_res.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).cpu().numpy()
        out.iou[idx] = scores.float().cpu().numpy()
        h, w = payload.original_size
        for s in range(0, len(idx), 8):  # full-size logits a few prompts at a time
            logits = F.interpolate(low_res[s : s + 8], (h, w), mode="bilinear", align_corners=False)
            part = idx[s : s + 8]
            out.masks[part] = (logits > 0).cpu().numpy()
            out.stability[part] = stability_score(logits, 0.0).cpu().numpy()

    def _decode_group(self, image: Sam2Image, prompts: list[Prompt], multimask: bool):
        """One decoder call for prompts of one layout: Bx(3|1)x256x256 logits and Bx(3|1) IoU."""
        pe, dev, bsz = self.model.sam_prompt_encoder, self.device, len(prompts)
        h, w = image.original_size
        scale = torch.tensor([self.resolution / w, self.resolution / h], device=dev)
        coords, labels = [], []
        if prompts[0].box is not None:  # box corners first, labels 2 and 3
            boxes = torch.as_tensor(np.stack([p.box for p in prompts]), dtype=torch.float, device=dev)
            coords.append(boxes.reshape(bsz, 2, 2) * scale)
            labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=dev).repeat(bsz, 1))
        if prompts[0].points is not None:
            points = torch.as_tensor(np.stack([p.points for p in prompts]), dtype=torch.float, device=dev)
            coords.append(points * scale)
            labels.append(torch.as_tensor(np.stack([p.labels for p in prompts]), dtype=torch.int, device=dev))
        concat = (torch.cat(coords, 1), torch.cat(labels, 1)) if coords else None
        if concat is None:
            sparse = torch.empty((bsz, 0, pe.embed_dim), device=dev)
        else:
            sparse, _ = pe(points=concat, boxes=None, masks=None)  # pads with the not-a-point token
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bsz, -1, *pe.image_embedding_size)
        with_mask = [i for i, p in enumerate(prompts) if p.mask_logits is not None]
        if with_mask:
            dense = dense.clone()
            mask_in = torch.as_tensor(
                np.stack([prompts[i].mask_logits.reshape(1, LOW_RES, LOW_RES) for i in with_mask]), device=dev
            )
            dense[with_mask] = pe.mask_downscaling(mask_in)
        low_res, iou, _, _ = self.model.sam_mask_decoder(
            image_embeddings=image.embedding.float(),
            image_pe=self._image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=bsz > 1,
            high_res_features=[f.float() for f in image.high_res],
        )
        return low_res, iou
