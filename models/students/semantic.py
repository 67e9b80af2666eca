"""Student segmentation networks: a registry by name over segmentation-models-pytorch.

Every student maps Bx3xHxW normalised images to BxCxHxW class logits (C = num_classes), for any H, W
divisible by 32 (`pad_to_multiple` handles the rest). Weights start random (nothing is downloaded);
user checkpoints load through `load_student`. Training and export ask this registry by name and
never import a concrete class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.config import lookup, register
from models.io import load_checkpoint, load_weights, save_checkpoint, weights_state

# ImageNet statistics: the convention of every encoder in segmentation-models-pytorch.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
STRIDE = 32
CHECKPOINT_KIND = "semantic_student"
SHIPPED_SEMANTIC_STUDENT = Path(__file__).resolve().parent / "weights" / "camvid_student.pt"
SHIPPED_INSTANCE_STUDENT = Path(__file__).resolve().parent / "weights" / "pennfudan_student.pt"


def _smp():
    import segmentation_models_pytorch as smp

    return smp


# name -> builder(num_classes)
student_registry: dict[str, Callable[[int], nn.Module]] = {}


@register(student_registry, "segformer-b0")
def build_segformer_b0(num_classes: int) -> nn.Module:
    """SegFormer with a MiT-B0 encoder (the paper's Cityscapes student), 3.7M parameters."""
    return _smp().Segformer("mit_b0", encoder_weights=None, classes=num_classes)


@register(student_registry, "deeplabv3plus-r50")
def build_deeplabv3plus_r50(num_classes: int) -> nn.Module:
    return _smp().DeepLabV3Plus("resnet50", encoder_weights=None, classes=num_classes)


@register(student_registry, "deeplabv3plus-r101")
def build_deeplabv3plus_r101(num_classes: int) -> nn.Module:
    """DeepLabV3+ with a ResNet-101 encoder (the paper's PASCAL student)."""
    return _smp().DeepLabV3Plus("resnet101", encoder_weights=None, classes=num_classes)


@register(student_registry, "fpn-mobilenetv2")
def build_fpn_mobilenetv2(num_classes: int) -> nn.Module:
    """The edge student: FPN over MobileNetV2, 4.2M parameters, the fastest on a CPU."""
    return _smp().FPN("mobilenet_v2", encoder_weights=None, classes=num_classes)


def build_student(name: str, num_classes: int) -> nn.Module:
    builder = lookup(student_registry, name, "student")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return builder(num_classes)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW uint8 or [0, 255] float -> normalised float input."""
    mean = torch.tensor(IMAGE_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGE_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad bottom/right to a multiple of the network stride; returns the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW uint8 images -> BxCxHxW logits at the input size (any H, W)."""
    x, (h, w) = pad_to_multiple(normalize(images))
    return model(x)[..., :h, :w]


def save_student(
    path: str | Path,
    model: nn.Module,
    name: str,
    num_classes: int,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """A `semantic_student` checkpoint: config {name, num_classes}, the weights (fp16 with `half`),
    `extra` as metadata (class names, base scale, the run's figures), written atomically."""
    config = {"name": name, "num_classes": num_classes}
    save_checkpoint(path, CHECKPOINT_KIND, config, weights_state(model, half), extra)


def load_student(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The registered student a checkpoint names, its weights loaded (eval mode), and its metadata
    with the config's name and num_classes; errors name the file."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KIND, "student checkpoint")
    name, num_classes = checkpoint.config["name"], int(checkpoint.config["num_classes"])
    model = load_weights(build_student(name, num_classes), checkpoint.weights, path, f"student {name!r}")
    return model, checkpoint.metadata | checkpoint.config


# Bx3xHxW float RGB in [0, 255] (any H, W) -> BxCxHxW logits at the input size
SemanticForward = Callable[[torch.Tensor], torch.Tensor]


def torch_semantic_forward(model: nn.Module, device: str | torch.device = "cpu") -> SemanticForward:
    """The PyTorch forward of a semantic student as a `SemanticForward`."""
    model = model.eval().to(device)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, images.to(device)).cpu()

    return forward


class StudentAnswers:
    """What every student behind an image API holds: its forward, its checkpoint's metadata, the
    runtime that runs it, the batch size, its name, class count and class names."""

    def __init__(
        self, forward: Any, meta: dict[str, Any], runtime: str, batch_size: int, default_name: str
    ) -> None:
        self.forward = forward
        self.meta = meta
        self.runtime = runtime
        self.batch_size = max(1, batch_size)
        self.name = str(meta.get("name", default_name))
        self.num_classes = int(meta["num_classes"])
        names = meta.get("class_names")
        self.class_names = list(names) if names else [f"class_{i}" for i in range(self.num_classes)]


class StudentSegmenter(StudentAnswers):
    """A trained student as images -> label maps, at the scale it was trained at.

    Each image is resized by the checkpoint's `base_scale` (bilinear, antialiased when shrinking, as
    the trainer's evaluation does), run through `forward` (PyTorch, ONNX Runtime or TensorRT:
    `models.students.runtime`), and its logits resized back to the image size before the argmax.
    Images of equal size share one forward pass (at most `batch_size` at a time).
    """

    task = "semantic"

    def __init__(
        self, forward: SemanticForward, meta: dict[str, Any], runtime: str = "torch", batch_size: int = 8
    ) -> None:
        super().__init__(forward, meta, runtime, batch_size, "student")
        self.base_scale = float(meta.get("base_scale", 1.0))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> StudentSegmenter:
        model, meta = load_student(path)
        return cls(torch_semantic_forward(model, device), meta)

    @torch.inference_mode()
    def logits(self, images: list) -> list[torch.Tensor]:
        """HxWx3 uint8 images -> CxHxW float logits at each image's own size."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"images[{i}]: expected HxWx3, got shape {tuple(image.shape)}")
            groups.setdefault(tuple(image.shape[:2]), []).append(i)
        for (h, w), same_size in groups.items():
            for start in range(0, len(same_size), self.batch_size):
                members = same_size[start : start + self.batch_size]
                x = torch.stack([torch.from_numpy(images[i]).permute(2, 0, 1) for i in members]).float()
                size = (max(1, round(h * self.base_scale)), max(1, round(w * self.base_scale)))
                if size != (h, w):
                    x = F.interpolate(
                        x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h
                    )
                    x = x.round().clamp(0, 255)
                logits = self.forward(x)
                if size != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                for j, i in enumerate(members):
                    out[i] = logits[j]
        return out  # type: ignore[return-value]

    def segment(self, images: list) -> list:
        """HxWx3 uint8 images -> HxW uint8 label maps (class ids)."""
        return [t.argmax(0).to(torch.uint8).cpu().numpy() for t in self.logits(images)]

    def info(self) -> dict[str, Any]:
        return {
            "student": self.name,
            "task": self.task,
            "runtime": self.runtime,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "base_scale": self.base_scale,
        } | {k: self.meta[k] for k in ("val_miou", "mode", "kind", "iterations") if k in self.meta}
