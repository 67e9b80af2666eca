"""Export wrappers around a SAM 2.1 image model (`sam2`'s SAM2Base): modules that see only tensors.

`Sam2EncoderOnnx`: B x 3 x S x S images, stretched to S (1024) and ImageNet-normalised as
`SAM2Transforms` makes them -> the image embedding B x 256 x 64 x 64 (the no-memory embedding
added, as `SAM2ImagePredictor.set_image` does) and the two high-res maps the decoder's upscaling
adds in: B x 32 x 256 x 256 and B x 64 x 128 x 128. B is dynamic.

`Sam2DecoderOnnx`: one image's embedding and high-res maps, shared by B prompts of N points each
(both dynamic) -> full-size mask logits, IoU predictions and low-res logits, the latter in SAM 2's
own frame (the image stretched to 256 x 256) and clamped to +-32 as the predictor hands them back
(the full-size logits come from the unclamped ones, as the predictor's masks do).
Points are in original-image pixels, packed as `SAM2ImagePredictor` packs them: box corners first
(labels 2, 3), then clicks (1 positive, 0 negative), then one padding point (0, 0) labelled -1 that
SAM 2's prompt encoder always appends. The original size is an input (`orig_im_size`): the
stretch to 1024 and the upsampling back are computed in the graph from it.

`multimask=False` keeps SAM 2's single-mask stability fallback (`dynamic_multimask_via_stability`):
an unstable single mask is replaced by the best of the three.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.sam_modules import _bilinear_matrix

LOGIT_CLAMP = 32.0  # as models.engine.sam2_torch and SAM2ImagePredictor


class Sam2EncoderOnnx(nn.Module):
    """Bx3xSxS stretched, normalised images -> embedding Bx256x64x64, high_res_0 Bx32x256x256,
    high_res_1 Bx64x128x128 (for S = 1024)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        side = int(model.image_size)
        self.sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        backbone = model.forward_image(images)
        _, feats, _, _ = model._prepare_backbone_features(backbone)
        if model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        batch = images.shape[0]
        maps = [
            f.permute(1, 2, 0).reshape(batch, -1, *size) for f, size in zip(feats, self.sizes, strict=True)
        ]
        return maps[2], maps[0], maps[1]


class Sam2DecoderOnnx(nn.Module):
    """SAM 2's prompt encoder + mask decoder + upsampling for B prompts on one image."""

    def __init__(self, model: nn.Module, multimask: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.multimask = multimask
        self.side = int(model.image_size)
        self.low_res = int(self.prompt_encoder.mask_input_size[0])
        self.register_buffer(
            "image_pe", self.prompt_encoder.get_dense_pe().detach().clone(), persistent=False
        )

    def forward(
        self,
        image_embeddings: Tensor,
        high_res_0: Tensor,
        high_res_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """image_embeddings 1x256x64x64, high_res_0 1x32x256x256, high_res_1 1x64x128x128,
        point_coords BxNx2 (x, y original pixels), point_labels BxN, mask_input Bx1x256x256 (SAM 2's
        frame), has_mask_input B, orig_im_size (2,) int64 [h, w] -> masks BxCxHxW logits,
        iou_predictions BxC, low_res_masks BxCx256x256 (C = 3 or 1)."""
        pe = self.prompt_encoder
        h, w = orig_im_size[0], orig_im_size[1]
        stretch = torch.stack([self.side / w.float(), self.side / h.float()])
        sparse = pe._embed_points(point_coords * stretch, point_labels, pad=False)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(
            1, -1, 1, 1
        )
        low_res, iou, _, _ = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
            repeat_image=True,
            high_res_features=[high_res_0, high_res_1],
        )
        size = torch.tensor(float(self.low_res))
        rows = _bilinear_matrix(h, size, self.low_res, size / h.float())
        cols = _bilinear_matrix(w, size, self.low_res, size / w.float())
        # as the predictor: full size from the raw logits, only the low-res ones handed back clamped
        masks = rows @ low_res @ cols.transpose(0, 1)
        return masks, iou, low_res.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
