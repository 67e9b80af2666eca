"""Export wrappers around SAM: modules that see only tensors and export with torch.export.

The same modules export EfficientViT-SAM (the light SAM): its encoder takes B x 3 x 512 x 512,
its prompt frame (`prompt_side`) stays 1024.

`SamEncoderOnnx`: B x 3 x 1024 x 1024 preprocessed images (normalised, padded, as
`Sam.preprocess` makes them) -> B x 256 x 64 x 64 embeddings; B is dynamic.

`SamDecoderOnnx`: one image's 1 x 256 x 64 x 64 embedding, shared by B prompts of N points each
(both dynamic), -> low-res logits, IoU predictions and logits at the ORIGINAL image size, which is
an input (`orig_im_size`), not a size fixed at export time. Points are in original-image pixel
coordinates; a box is two points labelled 2 and 3; a prompt without a box carries one padding point
(0, 0) labelled -1, exactly as `SamPredictor` builds them. Labels: -1 padding, 0 negative,
1 positive, 2 box top-left, 3 box bottom-right.

The resize back to the original size is written as two bilinear interpolation matrices (rows and
columns) built in the graph from `orig_im_size`, equal to SAM's upscale-to-1024, crop, resize
chain (align_corners=False) with no data-dependent shape besides the output's own.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn


class SamEncoderOnnx(nn.Module):
    """Bx3x1024x1024 float (normalised, zero-padded) -> Bx256x64x64 image embeddings."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, images: Tensor) -> Tensor:
        return self.image_encoder(images)


def _bilinear_matrix(size_out: Tensor, size_in: Tensor, length_in: int, scale: Tensor) -> Tensor:
    """size_out x length_in matrix of 1-D bilinear interpolation (align_corners=False) from the
    first `size_in` samples of a length_in signal to size_out samples; `scale` = size_in / size_out.

    size_out is a 0-d int64 tensor (data-dependent), size_in a 0-d float tensor."""
    i = torch.arange(size_out, dtype=torch.float32)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0.0)
    i0 = src.floor()
    lam = (src - i0)[:, None]
    i1 = torch.minimum(i0 + 1, size_in - 1)
    cols = torch.arange(length_in, dtype=torch.float32)[None, :]
    return (cols == i0[:, None]).float() * (1 - lam) + (cols == i1[:, None]).float() * lam


class SamDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder + postprocessing for B prompts on one image embedding."""

    def __init__(self, sam: Sam, multimask: bool = True, prompt_side: int | None = None) -> None:
        super().__init__()
        self.mask_decoder = sam.mask_decoder
        self.prompt_encoder = sam.prompt_encoder
        self.multimask = multimask
        # the prompt frame: SAM's encoder side, 1024 also for EfficientViT-SAM's 512 encoder
        self.img_size = prompt_side or sam.image_encoder.img_size
        self.low_res = self.prompt_encoder.mask_input_size[0]
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)
        low = torch.tensor(self.low_res)
        up = _bilinear_matrix(torch.tensor(self.img_size), low.float(), self.low_res, low / self.img_size)
        self.register_buffer("upscale", up, persistent=False)  # 1024 x 256

    def _embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """BxNx2 coords in the 1024 frame, BxN labels -> BxNx256 sparse embeddings."""
        pe = self.prompt_encoder
        enc = pe.pe_layer._pe_encoding((coords + 0.5) / self.img_size)
        labels = labels[..., None]
        enc = torch.where(labels == -1, pe.not_a_point_embed.weight[None], enc)
        for k in range(pe.num_point_embeddings):
            enc = enc + (labels == k).float() * pe.point_embeddings[k].weight[None]
        return enc

    def _sparse(self, point_coords: Tensor, point_labels: Tensor, orig_im_size: Tensor):
        """Sparse prompt embeddings BxNx256 and the resize geometry (h, w, new_h, new_w)."""
        h, w = orig_im_size[0], orig_im_size[1]
        hf, wf = h.float(), w.float()
        scale = self.img_size / torch.maximum(hf, wf)
        new_h = (hf * scale + 0.5).floor()
        new_w = (wf * scale + 0.5).floor()
        coords = point_coords * torch.stack([new_w / wf, new_h / hf])
        return self._embed_points(coords, point_labels), (h, w, new_h, new_w)

    def _select(self, low_res: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
        if self.multimask:
            return low_res[:, 1:], iou[:, 1:]
        return low_res[:, :1], iou[:, :1]

    def _to_original(self, low_res: Tensor, geometry: tuple) -> Tensor:
        """low-res (256) -> 1024 -> crop to the resized image -> original size, per axis one matrix."""
        h, w, new_h, new_w = geometry
        rows = _bilinear_matrix(h, new_h, self.img_size, new_h / h.float()) @ self.upscale
        cols = _bilinear_matrix(w, new_w, self.img_size, new_w / w.float()) @ self.upscale
        return rows @ low_res @ cols.transpose(0, 1)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """image_embeddings 1x256x64x64, point_coords BxNx2 (x, y original pixels), point_labels BxN,
        mask_input Bx1x256x256, has_mask_input B, orig_im_size (2,) int64 [h, w] ->
        masks BxCxHxW logits, iou_predictions BxC, low_res_masks BxCx256x256 (C = 3 or 1)."""
        sparse, geometry = self._sparse(point_coords, point_labels, orig_im_size)
        pe = self.prompt_encoder
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(
            1, -1, 1, 1
        )
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        low_res, iou = self._select(low_res, iou)
        return self._to_original(low_res, geometry), iou, low_res


class SamManyPromptDecoderOnnx(SamDecoderOnnx):
    """The decoder for B prompts WITHOUT mask inputs, in `ManyPromptDecoder`'s formulation: the image
    side of the first block is projected once for all prompts and the per-prompt projections of the
    4096 image tokens are folded into the few prompt tokens (same function, fewer FLOPs; see
    models/engine/modeling/fast_decoder.py). Inputs: image_embeddings, point_coords, point_labels, orig_im_size;
    outputs as `SamDecoderOnnx`. Runtimes use it when no prompt of a call carries a mask input."""

    def __init__(self, sam: Sam, multimask: bool = True, prompt_side: int | None = None) -> None:
        super().__init__(sam, multimask, prompt_side)
        from models.engine.modeling.fast_decoder import ManyPromptDecoder

        fast = ManyPromptDecoder(sam.mask_decoder, self.image_pe)
        # its constants were made under inference_mode; export needs ordinary tensors
        fast.key_pe = fast.key_pe.clone()
        fast._pe_k = {k: v.clone() for k, v in fast._pe_k.items()}
        fast._pe_q = {k: v.clone() for k, v in fast._pe_q.items()}
        for name in ("_w1", "_b1", "_w2", "_b2"):
            setattr(fast, name, getattr(fast, name).clone())
        self.fast = fast

    def forward(  # type: ignore[override]
        self, image_embeddings: Tensor, point_coords: Tensor, point_labels: Tensor, orig_im_size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """image_embeddings 1x256x64x64, point_coords BxNx2, point_labels BxN, orig_im_size (2,) ->
        masks BxCxHxW, iou_predictions BxC, low_res_masks BxCx256x256."""
        sparse, geometry = self._sparse(point_coords, point_labels, orig_im_size)
        _, _, h, w = image_embeddings.shape
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)  # 1 x N x C, shared by all prompts
        shared = self.fast._shared_first_layer(keys)
        low_res, iou = self.fast._chunk(sparse, keys, shared, self.multimask, (h, w))
        return self._to_original(low_res, geometry), iou, low_res


class StudentOnnx(nn.Module):
    """Bx3xHxW float images in [0, 255] (RGB, H and W multiples of the stride) -> BxCxHxW logits.

    Normalisation happens inside the graph; a runtime pads other sizes with `pad_value()` (the
    mean colour, which normalises to exactly 0, as `pad_to_multiple` pads after normalising) and
    crops the logits back."""

    def __init__(self, student: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def pad_value(self) -> list[float]:
        return [float(v) for v in self.mean.flatten()]

    def forward(self, images: Tensor) -> Tensor:
        return self.student((images - self.mean) / self.std)


class InstanceStudentOnnx(StudentOnnx):
    """Bx3xSxS float canvases in [0, 255] (RGB, the letterboxed training canvas) -> the last decoder
    layer's class logits BxQx(C+1) and mask logits BxQx(S/4)x(S/4). Normalisation is in the graph;
    the runtime pads the canvas with the mean colour (`InstanceSegmenter`)."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        class_logits, mask_logits, _, _ = self.student((images - self.mean) / self.std)
        return class_logits[-1], mask_logits[-1]
