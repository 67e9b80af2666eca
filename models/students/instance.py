"""Instance students: Mask2Former (HF `transformers`, random init, a timm backbone) with WISH's heads.

`InstanceStudent.forward` maps Bx3xHxW normalised images (H, W multiples of 32) to

- class_logits  LxBxQx(C+1)  per decoder layer (deep supervision), the last class is "no object"
- mask_logits   LxBxQx(H/4)x(W/4)
- prompts       LxBxQxP      the predicted SAM prompt latent of each query (WISH Eq. 10)
- cam           BxCx(H/32)x(W/32)  class activation maps of a 1x1 conv on the backbone's last stage (Eq. 16)

L = the decoder's layers plus its initial prediction. The heads: `class_head` (H_cls, Eq. 8), the mask
embedding inside Mask2Former (H_mask), `prompt_head` (H_prompt, an MLP, Eq. 10), `cam_head` (H_cam).
The forward has no data-dependent Python control flow, so it exports to ONNX as one graph
(`export.onnx_export`). Students are built by name from `instance_student_registry`;
`InstanceSegmenter` owns the pre- and post-processing around a forward (letterbox onto the training
canvas, Mask2Former's instance rule, masks back at each image's size).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import lookup
from models.io import load_checkpoint, load_weights, save_checkpoint
from models.students.semantic import IMAGE_MEAN, StudentAnswers, normalize

STRIDE = 32
PROMPT_DIM = 512  # SAM's prompt encoder: 2 tokens x 256 for one point (+ pad token) or one box
CHECKPOINT_KIND = "instance_student"


class MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int = 3) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class InstanceStudent(nn.Module):
    """Mask2Former + class, prompt and CAM heads (WISH, paper 002, Fig. 2)."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        hidden: int = 128,
        queries: int = 20,
        decoder_layers: int = 4,
        encoder_layers: int = 2,
        heads: int = 4,
        feedforward: int = 512,
        prompt_dim: int = PROMPT_DIM,
    ) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerModel, TimmBackboneConfig
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "timm_backbone is not a supported model": it works (tests)
        backbone_config = TimmBackboneConfig(
            backbone=backbone, out_indices=(1, 2, 3, 4), use_pretrained_backbone=False
        )
        config = Mask2FormerConfig(
            backbone_config=backbone_config,
            use_pretrained_backbone=False,
            hidden_dim=hidden,
            feature_size=hidden,
            mask_feature_size=hidden,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_queries=queries,
            encoder_feedforward_dim=feedforward,
            dim_feedforward=feedforward,
            num_attention_heads=heads,
        )
        try:
            self.mask2former = Mask2FormerModel(config)
        finally:
            hf_logging.set_verbosity(verbosity)
        channels = self.mask2former.pixel_level_module.encoder.num_features[-1]
        self.num_classes = num_classes
        self.class_head = nn.Linear(hidden, num_classes + 1)
        self.prompt_head = MLP(hidden, hidden, prompt_dim, 3)
        self.cam_head = nn.Conv2d(channels, num_classes, 1, bias=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.mask2former(pixel_values=images, output_hidden_states=True)
        queries = torch.stack(out.transformer_decoder_intermediate_states).transpose(1, 2)  # LxBxQxD
        masks = torch.stack(out.masks_queries_logits)  # LxBxQxhxw
        cam = self.cam_head(out.encoder_hidden_states[-1])
        return self.class_head(queries), masks, self.prompt_head(queries), cam


def _build(num_classes: int, **kwargs: Any) -> InstanceStudent:
    return InstanceStudent(num_classes, **kwargs)


# name -> builder(num_classes); the small one trains on this machine, the others where a GPU is
instance_student_registry: dict[str, Callable[[int], InstanceStudent]] = {
    "m2f-r18": functools.partial(_build, backbone="resnet18", hidden=128, queries=20, decoder_layers=4),
    "m2f-r50": functools.partial(
        _build,
        backbone="resnet50",
        hidden=256,
        queries=100,
        decoder_layers=10,
        encoder_layers=6,
        heads=8,
        feedforward=1024,
    ),
}


def build_instance_student(name: str, num_classes: int) -> InstanceStudent:
    return lookup(instance_student_registry, name, "instance student")(num_classes)


# -- pre- and post-processing (pure) -------------------------------------------------------------
def letterbox_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(h, w) of an image of `size` scaled so its longer side is `side` (rounded)."""
    h, w = size
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def padded(size: tuple[int, int], multiple: int = STRIDE) -> tuple[int, int]:
    """`size` (h, w) with each side rounded up to a multiple of `multiple`."""
    return tuple(-(-s // multiple) * multiple for s in size)  # type: ignore[return-value]


def letterbox(image: torch.Tensor, side: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """HxWx3 uint8 tensor -> 3xH'xW' normalised, the longer side scaled to `side`, zero-padded (after
    normalisation) to multiples of 32 at the bottom and right; also the scaled (h, w) before padding."""
    sh, sw = letterbox_size(tuple(image.shape[:2]), side)
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    ph, pw = padded((sh, sw))
    return F.pad(normalize(x), (0, pw - sw, 0, ph - sh))[0], (sh, sw)


def _is_real(value: Any) -> bool:
    """A Python or numpy real number, bools excluded."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def as_top_k(top_k: Any) -> int:
    """`top_k` as an int >= 0: ints, numpy integers and integral floats (3.0) pass; anything else
    (2.5, -1, NaN, True, "3") is a ValueError naming the value."""
    if not _is_real(top_k) or not float(top_k).is_integer() or top_k < 0:
        raise ValueError(f"top_k must be a whole number >= 0, got {top_k!r}")
    return int(top_k)


def as_min_score(min_score: Any) -> float:
    """`min_score` as a float (any number, infinities included; scores lie in [0, 1]); NaN, bools and
    non-numbers are a ValueError naming the value."""
    if not _is_real(min_score) or np.isnan(min_score):
        raise ValueError(f"min_score must be a number, got {min_score!r}")
    return float(min_score)


def instances_from_outputs(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, top_k: int = 50, min_score: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask2Former's instance inference for one image: Qx(C+1) class logits and Qxhxw mask logits ->
    the top_k (query, class) pairs by class probability, rescored and kept when score >= min_score,
    as (mask logits Kxhxw, classes K int64, scores K), best first. Score = class probability x the
    mean mask probability inside the mask (logit > 0), Mask2Former's rule. K may be 0."""
    top_k, min_score = as_top_k(top_k), as_min_score(min_score)
    probs = class_logits.softmax(-1)[:, :-1]  # QxC, "no object" dropped
    q, c = probs.shape
    scores, flat = probs.flatten().topk(min(top_k, q * c))
    logits = mask_logits[flat // c]
    inside = (logits > 0).float()
    mask_prob = (logits.sigmoid() * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
    scores = scores * mask_prob
    keep = (scores >= min_score).nonzero()[:, 0]
    order = keep[scores[keep].argsort(descending=True, stable=True)]
    return logits[order], (flat % c)[order], scores[order]


def instances_at_size(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    canvas: tuple[int, int],
    scaled: tuple[int, int],
    size: tuple[int, int],
    top_k: int = 50,
    min_score: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One letterboxed image's last-layer outputs (Qx(C+1), Qxhxw) -> its instances at the image's
    own `size`: (masks KxHxW bool, classes K int64, scores K float32), best first, scores >=
    min_score; K may be 0. `canvas` is the padded input size, `scaled` the image's size inside it
    (top-left). top_k and min_score drop instances before any upsampling."""
    logits, classes, scores = instances_from_outputs(class_logits, mask_logits, top_k, min_score)
    if len(scores) == 0:
        return np.zeros((0, *size), bool), np.zeros(0, np.int64), np.zeros(0, np.float32)
    up = F.interpolate(logits[None], size=tuple(canvas), mode="bilinear", align_corners=False)
    up = F.interpolate(
        up[..., : scaled[0], : scaled[1]], size=tuple(size), mode="bilinear", align_corners=False
    )
    return up[0].cpu().numpy() > 0, classes.cpu().numpy(), scores.float().cpu().numpy()


def letterbox_pixels(
    image: np.ndarray, side: int, pad_value: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """HxWx3 uint8 -> 3xSxS float RGB in [0, 255] on the training canvas (S = `side`): the longer side
    scaled to S (bilinear, antialiased), padded at the bottom and right with `pad_value` (3, the mean
    colour, which normalises to 0: the recipe pads with zeros after normalising). Also the scaled (h, w)."""
    sh, sw = letterbox_size(tuple(image.shape[:2]), side)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)[0]
    canvas = pad_value.view(3, 1, 1).expand(3, side, side).clone()
    canvas[:, :sh, :sw] = x
    return canvas, (sh, sw)


# Bx3xSxS float RGB [0, 255] canvases -> (class logits BxQx(C+1), mask logits BxQx(S/4)x(S/4)), last layer
InstanceForward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def torch_instance_forward(model: InstanceStudent, device: str | torch.device = "cpu") -> InstanceForward:
    """The PyTorch forward of an instance student as an `InstanceForward` (normalisation included):
    the model is moved to `device` in eval mode, runs without autograd, and the last layer's logits
    come back on the CPU."""
    model = model.to(device).eval()

    @torch.inference_mode()
    def forward(canvases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        class_logits, mask_logits, _, _ = model(normalize(canvases.to(device)))
        return class_logits[-1].cpu(), mask_logits[-1].cpu()

    return forward


class InstanceSegmenter(StudentAnswers):
    """An instance student behind an image API: HxWx3 uint8 images -> instances at full size.

    Images are letterboxed onto the square training canvas (`input_side` of `meta`, 320 without
    one), run through `forward` (PyTorch, ONNX Runtime or TensorRT: `models.students.runtime`) in
    batches of `batch_size`, and post-processed with Mask2Former's rule (`instances_at_size`)."""

    task = "instance"

    def __init__(
        self, forward: InstanceForward, meta: dict[str, Any], runtime: str = "torch", batch_size: int = 8
    ) -> None:
        super().__init__(forward, meta, runtime, batch_size, "instance-student")
        self.side = int(meta.get("input_side", 320))
        self.pad_value = torch.tensor(IMAGE_MEAN) * 255

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> InstanceSegmenter:
        """A segmenter running a `.pt` checkpoint (`save_instance_student`) in PyTorch on `device`."""
        model, meta = load_instance_student(path)
        return cls(torch_instance_forward(model, device), meta)

    def segment(
        self, images: list[np.ndarray], *, top_k: int = 50, min_score: float = 0.05
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per HxWx3 uint8 image: (masks KxHxW bool, class ids K int64, scores K float32), best
        first, at most `top_k` (a whole number >= 0), scores >= `min_score`; K may be 0 (then the
        masks are 0xHxW). Bad top_k or min_score, or an image that is not HxWx3: ValueError before
        any work."""
        top_k, min_score = as_top_k(top_k), as_min_score(min_score)
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"images[{i}]: expected HxWx3, got shape {tuple(image.shape)}")
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            boxed = [letterbox_pixels(image, self.side, self.pad_value) for image in chunk]
            class_logits, mask_logits = self.forward(torch.stack([canvas for canvas, _ in boxed]))
            for j, image in enumerate(chunk):
                out.append(
                    instances_at_size(
                        class_logits[j],
                        mask_logits[j],
                        (self.side, self.side),
                        boxed[j][1],
                        image.shape[:2],
                        top_k,
                        min_score,
                    )
                )
        return out

    def info(self) -> dict[str, Any]:
        """What it is (name, task, runtime, classes, canvas side) and, where the metadata has them,
        its validation AP, training mode, labels and iterations."""
        return {
            "student": self.name,
            "task": self.task,
            "runtime": self.runtime,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_side": self.side,
        } | {
            k: self.meta[k] for k in ("val_ap", "val_ap50", "mode", "labels", "iterations") if k in self.meta
        }


def save_instance_student(
    path: str | Path, model: InstanceStudent, name: str, num_classes: int, extra: dict[str, Any] | None = None
) -> None:
    """An `instance_student` checkpoint, written atomically: config {name, num_classes} (the
    registry name), the state dict (in the dtype the model holds) and `extra` as metadata (class
    names, input side, ...)."""
    config = {"name": name, "num_classes": num_classes}
    save_checkpoint(path, CHECKPOINT_KIND, config, model.state_dict(), extra)


def load_instance_student(path: str | Path) -> tuple[InstanceStudent, dict[str, Any]]:
    """The student of a checkpoint (rebuilt by its registry name, weights loaded, eval mode) and its
    metadata with the config's name and num_classes. A missing or unreadable file, one that is not
    an instance student checkpoint, or weights that do not fit are a ValueError naming the file; an
    unknown registry name is a ValueError naming the choices."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KIND, "instance student checkpoint")
    name, num_classes = checkpoint.config["name"], int(checkpoint.config["num_classes"])
    model = load_weights(build_instance_student(name, num_classes), checkpoint.weights, path, name)
    return model, checkpoint.metadata | checkpoint.config
