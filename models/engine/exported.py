"""The host side shared by every backend that runs an exported SAM (ONNX Runtime, TensorRT, Triton).

The exported graphs (see `export.sam_modules`, `export.sam2_modules`) take preprocessed square
images and, for the decoder, prompts packed as points in ORIGINAL image coordinates. This module
owns that preparation, as metadata.json records it, exactly as the torch backends do it:

- kind `sam` (SAM 1 and the light SAM): resize the longest side to the encoder's side (the
  official `ResizeLongestSide`; 1024, or 512 for EfficientViT-SAM), normalise, zero-pad; points
  first, then a box as two points labelled 2 and 3; without a box one padding point (0, 0)
  labelled -1, as `SamPredictor`;
- kind `sam2` (SAM 2.1): stretch to 1024x1024 on [0, 1] floats, ImageNet-normalise; box corners
  first, then points, then the padding point always, as `SAM2ImagePredictor`. The encoder also
  gives two high-res maps, cached with the embedding and handed to the decoder; low-res logits are
  in SAM 2's stretched frame (`mask_logits` makes mask prompts in it).

A subclass only runs the graphs.

One difference from the torch backend is inherent to the exported decoder: it needs at least one
point per prompt, so a prompt holding only `mask_logits` carries the padding point (as the official
ONNX export does), where the torch backend passes no sparse token at all.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from models.engine.base import DEFAULT_WORKING_SIDE, BatchedDecoder, stability_score
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.transforms import ResizeLongestSide
from models.engine.types import LOW_RES, Predictions, Prompt
from models.runtime.onnx_runtime import SAM_KINDS, ExportMetadata, load_export_metadata

DECODER_ROLES = {True: "decoder", False: "decoder_single"}  # multimask -> the decoder graph


ENCODER_OUTPUTS = ("image_embeddings",)  # kind sam; sam2 lists its own in metadata.json
PADDING = (np.zeros((1, 2), np.float32), np.array([-1.0], np.float32))  # SAM's not-a-point


@dataclass(frozen=True)
class ExportedImage:
    """Cached per-image state: the 1x256x64x64 float32 embedding, the original (H, W), and SAM 2's
    high-res maps (1x32x256x256, 1x64x128x128; empty for SAM 1)."""

    embedding: np.ndarray
    original_size: tuple[int, int]
    high_res: tuple[np.ndarray, ...] = ()


def pack_prompts(prompts: list[Prompt], box_first: bool = False) -> dict[str, np.ndarray]:
    """Prompts of ONE layout (same point count, all or none with a box) -> decoder inputs.

    SAM 1 (`box_first=False`): points, then the box corners (labels 2, 3), or without a box one
    padding point. SAM 2 (`box_first=True`): box corners, then points, then the padding point always.
    Returns point_coords BxNx2, point_labels BxN, mask_input Bx1x256x256, has_mask_input B (float32)."""
    coords, labels = [], []
    for p in prompts:
        parts = []
        if p.points is not None:
            parts.append((p.points.astype(np.float32), p.labels.astype(np.float32)))
        if p.box is not None:
            box = (p.box.reshape(2, 2).astype(np.float32), np.array([2.0, 3.0], np.float32))
            parts.insert(0 if box_first else len(parts), box)
        if box_first or p.box is None:
            parts.append(PADDING)
        coords.append(np.concatenate([c for c, _ in parts]))
        labels.append(np.concatenate([lbl for _, lbl in parts]))
    masks = np.zeros((len(prompts), 1, LOW_RES, LOW_RES), np.float32)
    has = np.zeros((len(prompts),), np.float32)
    for i, p in enumerate(prompts):
        if p.mask_logits is not None:
            masks[i, 0] = p.mask_logits.reshape(LOW_RES, LOW_RES)
            has[i] = 1.0
    return {
        "point_coords": np.stack(coords),
        "point_labels": np.stack(labels),
        "mask_input": masks,
        "has_mask_input": has,
    }


class EngineOptions(TypedDict, total=False):
    """The host-side settings every exported-SAM backend passes on to `ExportedSamEngine`."""

    cache_bytes: int
    encoder_batch: int
    decode_batch: int
    max_prompts: int | None
    working_side: int | None


class ExportedSamEngine(BatchedDecoder):
    """PromptableSegmenter over an export directory (its path, or its `ExportMetadata` when the caller
    has read it already); subclasses implement `_run_encoder`/`_run_decoder`."""

    def __init__(
        self,
        export_dir: str | Path | ExportMetadata,
        name: str,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        encoder_batch: int = 4,
        decode_batch: int = 16,
        max_prompts: int | None = None,
        encoder_file: str = "encoder",
        working_side: int | None = DEFAULT_WORKING_SIDE,
    ) -> None:
        super().__init__(cache_bytes=cache_bytes, max_prompts=max_prompts, working_side=working_side)
        self.metadata = load_export_metadata(export_dir, kind=SAM_KINDS)
        self.export_dir = self.metadata.directory
        self.name = name
        self.family = self.metadata.kind  # sam (SAM 1, light SAM) or sam2
        self.stretches = self.family == "sam2"  # the working-side reduction follows its preprocessing
        self.image_size = int(self.metadata["image_size"])
        self.transform = ResizeLongestSide(self.image_size)
        self.mean = np.asarray(self.metadata["pixel_mean"], np.float32).reshape(3, 1, 1)
        self.std = np.asarray(self.metadata["pixel_std"], np.float32).reshape(3, 1, 1)
        self.encoder_outputs = tuple(self.metadata.get("encoder_outputs", ENCODER_OUTPUTS))
        self.threshold = float(self.metadata["mask_threshold"])
        self.encoder_batch = max(1, encoder_batch)
        self.decode_batch = max(1, decode_batch)
        # the encoder file's hash names the model: caches shared between engines never mix models
        self._namespace = f"{name}:{self.metadata['files'][encoder_file]['sha256'][:16]}"

    @property
    def namespace(self) -> str:
        return self._namespace

    # -- what a runtime implements -------------------------------------------------------------
    @abstractmethod
    def _run_encoder(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Bx3xSxS float32 -> the encoder's outputs by name (`encoder_outputs`): image_embeddings
        Bx256x64x64 float32, and for SAM 2 high_res_0 Bx32x256x256 and high_res_1 Bx64x128x128."""

    @abstractmethod
    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        """Decoder inputs (see `pack_prompts`, plus image_embeddings and orig_im_size) -> a dict with
        masks BxCxHxW, iou_predictions BxC, low_res_masks BxCx256x256."""

    # -- host side -----------------------------------------------------------------------------
    def mask_logits(self, mask: np.ndarray) -> np.ndarray:
        """HxW bool -> a 1x256x256 mask prompt in this export's low-res frame."""
        from models.engine.lowres import mask_to_low_res
        from models.engine.sam2_torch import stretched_mask_logits

        return stretched_mask_logits(mask) if self.family == "sam2" else mask_to_low_res(mask)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 3xSxS float32: for SAM 1 as `Sam.preprocess` after `ResizeLongestSide`,
        for SAM 2 as `SAM2Transforms` (stretched, antialiased, on [0, 1] floats)."""
        if self.family == "sam2":
            from torchvision.transforms.functional import resize

            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0)
            t = resize(t, [self.image_size, self.image_size], antialias=True).numpy()
            return (t - self.mean) / self.std
        resized = self.transform.apply_image(image)
        x = (resized.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        out = np.zeros((3, self.image_size, self.image_size), np.float32)
        out[:, : x.shape[1], : x.shape[2]] = x
        return out

    def _encode(self, images: list[np.ndarray]) -> list[ExportedImage]:
        out: list[ExportedImage] = []
        for start in range(0, len(images), self.encoder_batch):
            chunk = images[start : start + self.encoder_batch]
            outputs = self._run_encoder(np.stack([self.preprocess(im) for im in chunk]))
            features = [outputs[name] for name in self.encoder_outputs]
            self.stats.encoder_calls += 1
            self.stats.images_encoded += len(chunk)
            # each image's own copy: a view would keep the whole batch's outputs alive in the
            # cache while the budget counts one image
            out.extend(
                ExportedImage(
                    features[0][j : j + 1].copy(),
                    im.shape[:2],
                    tuple(f[j : j + 1].copy() for f in features[1:]),
                )
                for j, im in enumerate(chunk)
            )
        return out

    def _payload_nbytes(self, payload: ExportedImage) -> int:
        return int(payload.embedding.nbytes + sum(f.nbytes for f in payload.high_res))

    def _decode_group_into(
        self, payload: ExportedImage, prompts: list[Prompt], multimask: bool, out: Predictions, idx: list[int]
    ) -> None:
        inputs = pack_prompts(prompts, box_first=self.family == "sam2")
        inputs["image_embeddings"] = payload.embedding
        for name, feature in zip(self.encoder_outputs[1:], payload.high_res, strict=True):
            inputs[name] = feature
        inputs["orig_im_size"] = np.array(payload.original_size, np.int64)
        result = self._run_decoder(inputs, multimask)
        out.masks[idx] = result["masks"] > self.threshold
        out.stability[idx] = stability_score(result["masks"], self.threshold)
        out.iou[idx] = result["iou_predictions"]
        out.low_res_logits[idx] = result["low_res_masks"]

    def info(self) -> dict[str, Any]:
        return super().info() | {"export_dir": str(self.export_dir), "sam_type": self.metadata["sam_type"]}
