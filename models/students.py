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

# ImageNet statistics: the convention of every encoder in segmentation-models-pytorch.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
STRIDE = 32


def _smp():
    import segmentation_models_pytorch as smp

    return smp


def build_segformer_b0(num_classes: int) -> nn.Module:
    """SegFormer with a MiT-B0 encoder (the paper's Cityscapes student), 3.7M parameters."""
    return _smp().Segformer("mit_b0", encoder_weights=None, classes=num_classes)


def build_deeplabv3plus_r50(num_classes: int) -> nn.Module:
    return _smp().DeepLabV3Plus("resnet50", encoder_weights=None, classes=num_classes)


def build_deeplabv3plus_r101(num_classes: int) -> nn.Module:
    """DeepLabV3+ with a ResNet-101 encoder (the paper's PASCAL student)."""
    return _smp().DeepLabV3Plus("resnet101", encoder_weights=None, classes=num_classes)


def build_fpn_mobilenetv2(num_classes: int) -> nn.Module:
    """The edge student: FPN over MobileNetV2, 4.2M parameters, the fastest on a CPU."""
    return _smp().FPN("mobilenet_v2", encoder_weights=None, classes=num_classes)


student_registry: dict[str, Callable[[int], nn.Module]] = {
    "segformer-b0": build_segformer_b0,
    "deeplabv3plus-r50": build_deeplabv3plus_r50,
    "deeplabv3plus-r101": build_deeplabv3plus_r101,
    "fpn-mobilenetv2": build_fpn_mobilenetv2,
}


def build_student(name: str, num_classes: int) -> nn.Module:
    if name not in student_registry:
        raise ValueError(f"unknown student {name!r}; choose one of {sorted(student_registry)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return student_registry[name](num_classes)


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
    """A self-describing checkpoint {name, num_classes, state_dict, ...}, written atomically."""
    from models.weak import atomic_write

    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {"name": name, "num_classes": num_classes, "state_dict": state} | (extra or {})
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_student(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Build the registered student a checkpoint names and load its weights; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such student checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the student checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or not {"name", "num_classes", "state_dict"} <= set(payload):
        raise ValueError(f"{path}: not a student checkpoint (needs name, num_classes, state_dict)")
    model = build_student(payload["name"], int(payload["num_classes"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit student {payload['name']!r}: {str(exc)[:300]}") from exc
    return model.eval(), {k: v for k, v in payload.items() if k != "state_dict"}
