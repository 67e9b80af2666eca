"""SAM's mask decoder evaluated for many prompts on ONE image, without repeating shared work.

segment-anything's `MaskDecoder` copies the 256x64x64 image embedding once per prompt and runs
every projection of the 4096 image tokens per prompt; on a CPU that costs ~75 ms per prompt and
plain batching does not help. `ManyPromptDecoder` computes the same function (same weights, same
formulas, only re-associated sums) so that:

- while the image tokens are still prompt-independent (first block, no mask input), their key,
  value and query projections are computed once and shared by all prompts;
- where the image tokens differ per prompt, a projection of the 4096 image tokens is folded into
  the handful of prompt tokens instead: (X W^T) t == X (W^T t), and softmax rows sum to one so
  A (X W^T + b) == (A X) W^T + b; the output projection of image-to-token attention likewise;
- the positional-encoding projections are constants of the model, computed once;
- the two transposed convolutions (kernel 2, stride 2) of the upscaler are per-token matrix
  products done in token layout, so no NCHW transposes and one fused LayerNorm;
- prompts run in small chunks so large temporaries are reused instead of freshly page-faulted.

Results equal `MaskDecoder.forward` up to float32 rounding (tests check 1e-5). The decoder's
parameters are only read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor

DEFAULT_CHUNK = 2


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """B x L x (h*d) -> B x h x L x d."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """B x h x L x d -> B x L x (h*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _weight_heads(linear: torch.nn.Linear, num_heads: int) -> Tensor:
    """Projection weight (h*d) x C -> h x d x C."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(num_heads, out_dim // num_heads, in_dim)


def _softmax_(x: Tensor) -> Tensor:
    """In-place softmax over the last dim (torch's kernel is slow for last dims of ~10)."""
    x.sub_(x.amax(dim=-1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


class ManyPromptDecoder:
    """Evaluate a `MaskDecoder` for B prompts that share one image embedding.

    Build once per model (it precomputes projections of the dense positional encoding), then
    call with one image's embedding and a batch of prompt embeddings.
    """

    def __init__(self, decoder: MaskDecoder, image_pe: Tensor, chunk: int = DEFAULT_CHUNK) -> None:
        self.decoder = decoder
        self.chunk = max(1, int(chunk))
        t = decoder.transformer
        with torch.inference_mode():
            self.key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()  # 1 x N x C
            # Projections of the positional encoding (bias included), per attention that needs it.
            self._pe_k = {id(a): self._pe_proj(a.k_proj, a) for a in self._t2i_attns()}
            self._pe_q = {
                id(layer.cross_attn_image_to_token): self._pe_proj(
                    layer.cross_attn_image_to_token.q_proj, layer.cross_attn_image_to_token
                )
                for layer in t.layers
            }
            up = decoder.output_upscaling
            conv1, norm, self._act1, conv2, self._act2 = up[0], up[1], up[2], up[3], up[4]
            # ConvTranspose2d(k=2, s=2) weight in x out x 2 x 2 -> in x (2*2*out), sub-pixel major.
            self._w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, -1).t().contiguous()
            self._b1 = conv1.bias.repeat(4)
            self._norm = norm
            self._w2 = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1).t().contiguous()
            self._b2 = conv2.bias.repeat(4)
            self._c1, self._c2 = conv1.out_channels, conv2.out_channels

    def _t2i_attns(self) -> list[Attention]:
        t = self.decoder.transformer
        return [layer.cross_attn_token_to_image for layer in t.layers] + [t.final_attn_token_to_image]

    def _pe_proj(self, linear: torch.nn.Linear, attn: Attention) -> Tensor:
        return _heads(linear(self.key_pe), attn.num_heads)[0].contiguous()  # h x N x d

    # -- attention pieces -------------------------------------------------------------------
    def _token_to_image(self, attn: Attention, q_in: Tensor, keys: Tensor, shared: tuple | None) -> Tensor:
        """Attention(q=q_in, k=keys + key_pe, v=keys): prompt tokens attend to image tokens.

        q_in: B x T x C. keys: B x N x C (ignored when `shared` holds the projected k, v).
        """
        h = attn.num_heads
        bsz, t, _ = q_in.shape
        q = _heads(attn.q_proj(q_in), h)  # B x h x T x d
        d = q.shape[-1]
        if shared is not None:
            k, v = shared  # h x N x d each
            qf = q.transpose(0, 1).reshape(h, bsz * t, d)
            probs = _softmax_(torch.bmm(qf, k.transpose(1, 2)).div_(math.sqrt(d)))  # h x BT x N
            out = torch.bmm(probs, v).reshape(h, bsz, t, d).transpose(0, 1)  # B x h x T x d
        else:
            q_fold = torch.einsum("bhtd,hdc->bhtc", q, _weight_heads(attn.k_proj, h)).reshape(bsz, h * t, -1)
            logits = torch.bmm(q_fold, keys.transpose(1, 2)).view(bsz, h, t, -1)
            logits.add_(q @ self._pe_k[id(attn)].transpose(1, 2)).div_(math.sqrt(d))
            probs = _softmax_(logits)  # B x h x T x N
            pooled = torch.bmm(probs.view(bsz, h * t, -1), keys).view(bsz, h, t, -1)  # B x h x T x C
            out = torch.einsum("bhtc,hdc->bhtd", pooled, _weight_heads(attn.v_proj, h))
            out = out + attn.v_proj.bias.reshape(h, 1, -1)
        return attn.out_proj(_merge_heads(out))

    def _image_to_token(
        self, attn: Attention, keys: Tensor, q_tok: Tensor, v_tok: Tensor, shared_q: Tensor | None
    ) -> Tensor:
        """Attention(q=keys + key_pe, k=q_tok, v=v_tok): image tokens attend to prompt tokens.

        keys: B x N x C (unused when `shared_q`, the projected image queries h x N x d, is given).
        q_tok, v_tok: B x T x C. Returns B x N x C.
        """
        h = attn.num_heads
        bsz, t, _ = q_tok.shape
        kt = _heads(attn.k_proj(q_tok), h)  # B x h x T x d
        vt = _heads(attn.v_proj(v_tok), h)
        d = kt.shape[-1]
        # Logits laid out B x N x (h*T) so the softmax and the output product read contiguous rows.
        kt_cat = torch.zeros(bsz, h * d, h * t, dtype=kt.dtype, device=kt.device)  # block diagonal over heads
        for i in range(h):
            kt_cat[:, i * d : (i + 1) * d, i * t : (i + 1) * t] = kt[:, i].transpose(1, 2)
        if shared_q is not None:
            q_img = shared_q.transpose(0, 1).reshape(1, -1, h * d)  # 1 x N x (h*d)
            logits = torch.matmul(q_img, kt_cat)  # B x N x hT
        else:
            fold = torch.einsum("hdc,bhtd->bcht", _weight_heads(attn.q_proj, h), kt).reshape(bsz, -1, h * t)
            logits = torch.bmm(keys, fold)
            q_pe = self._pe_q[id(attn)].transpose(0, 1).reshape(1, -1, h * d)
            logits.add_(torch.matmul(q_pe, kt_cat))
        probs = _softmax_(logits.div_(math.sqrt(d)).view(bsz, -1, h, t)).view(bsz, -1, h * t)
        wo = attn.out_proj.weight.reshape(-1, h, d)  # C x h x d
        value_out = torch.einsum("bhtd,chd->bhtc", vt, wo).reshape(bsz, h * t, -1)  # B x hT x C
        return torch.baddbmm(attn.out_proj.bias.expand(bsz, 1, -1), probs, value_out)

    def _block(
        self,
        layer: TwoWayAttentionBlock,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        shared: dict | None,
    ) -> tuple[Tensor, Tensor]:
        """TwoWayAttentionBlock.forward; `shared` holds the image-side projections when keys are shared."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        t2i = layer.cross_attn_token_to_image
        queries = queries + self._token_to_image(
            t2i, queries + query_pe, keys, shared["t2i"] if shared else None
        )
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))
        attn_out = self._image_to_token(
            layer.cross_attn_image_to_token,
            keys,
            queries + query_pe,
            queries,
            shared["i2t"] if shared else None,
        )
        keys = layer.norm4(attn_out.add_(keys))
        return queries, keys

    def _shared_first_layer(self, keys: Tensor) -> dict:
        """Projections of prompt-independent image tokens for the first block (1 x N x C keys)."""
        layer = self.decoder.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        with_pe = keys + self.key_pe
        k = _heads(t2i.k_proj(with_pe), t2i.num_heads)[0].contiguous()
        v = _heads(t2i.v_proj(keys), t2i.num_heads)[0].contiguous()
        q = _heads(i2t.q_proj(with_pe), i2t.num_heads)[0].contiguous()
        return {"t2i": (k, v), "i2t": q}

    # -- output ------------------------------------------------------------------------------
    def _upscale_masks(self, keys: Tensor, hyper_in: Tensor, size: tuple[int, int]) -> Tensor:
        """output_upscaling + hypernetwork product in token layout. keys B x N x C -> B x M x 4H x 4W."""
        bsz = keys.shape[0]
        h, w = size
        y = F.linear(keys, self._w1, self._b1).view(bsz, -1, self._c1)  # B x (N*4) x C1
        y = self._act1(F.layer_norm(y, (self._c1,), self._norm.weight, self._norm.bias, self._norm.eps))
        z = self._act2(F.linear(y, self._w2, self._b2)).view(bsz, -1, self._c2)  # B x (N*16) x C2
        m = torch.bmm(z, hyper_in.transpose(1, 2))  # B x (N*16) x M, rows (i, j, di, dj, ei, ej)
        m = m.view(bsz, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return m.reshape(bsz, -1, 4 * h, 4 * w)

    @torch.inference_mode()
    def __call__(
        self, image_embedding: Tensor, sparse: Tensor, dense: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """Low-res masks Bx(3|1)x256x256 and IoU predictions Bx(3|1) for B prompts on one image.

        image_embedding: 1 x C x H x W. sparse: B x T x C. dense: 1 x C x H x W when every prompt
        has the same dense embedding (no mask input), else B x C x H x W.
        """
        _, _, h, w = image_embedding.shape
        shared_keys = dense.shape[0] == 1
        keys0 = (image_embedding + dense).flatten(2).transpose(1, 2)  # (1|B) x N x C
        shared = self._shared_first_layer(keys0) if shared_keys else None
        masks, ious = [], []
        for start in range(0, sparse.shape[0], self.chunk):
            sp = sparse[start : start + self.chunk]
            keys = keys0 if shared_keys else keys0[start : start + self.chunk]
            m, i = self._chunk(sp, keys, shared, multimask_output, (h, w))
            masks.append(m)
            ious.append(i)
        return torch.cat(masks), torch.cat(ious)

    def _chunk(
        self, sparse: Tensor, keys: Tensor, shared: dict | None, multimask: bool, size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        dec = self.decoder
        bsz = sparse.shape[0]
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(bsz, -1, -1), sparse], dim=1)  # B x T x C
        t = dec.transformer
        queries = tokens
        for index, layer in enumerate(t.layers):
            queries, keys = self._block(layer, queries, keys, tokens, shared if index == 0 else None)
        queries = queries + self._token_to_image(t.final_attn_token_to_image, queries + tokens, keys, None)
        queries = t.norm_final_attn(queries)

        selected = range(1, dec.num_mask_tokens) if multimask else range(1)
        mask_tokens = queries[:, 1 : 1 + dec.num_mask_tokens, :]
        hyper_in = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) for i in selected], 1)
        masks = self._upscale_masks(keys, hyper_in, size)
        iou = dec.iou_prediction_head(queries[:, 0, :])
        return masks, (iou[:, 1:] if multimask else iou[:, :1])
