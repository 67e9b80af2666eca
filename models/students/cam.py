"""Class activation maps from image tags: a student backbone, a 1x1 conv CAM head and GAP.

The classifier every tags pipeline starts from (SEPL, paper 001; WeakSAM's peak prompts, paper
004): the backbone of a registered semantic student (`models.students.semantic`), optionally dilated to
`output_stride` 16 or 8 so that the maps keep more detail, then a 1x1 convolution to one map per
class (the CAM head of WISH, paper 002, Eq. 16). Global average pooling of the maps gives the image
logits the multi-label loss reads (`training.wish.cam_loss`, Eq. 17); since the head is linear this
equals the classic GAP -> FC classifier whose weights project the features into CAMs.

At inference the maps are normalised as the CAM papers do: ReLU, each class divided by its own
maximum over the image, so every tagged class peaks at 1 (`normalise_cam`). `cam_pseudo_labels`
turns them into a class map with a background threshold (the rule is documented there).

Modules see tensors only; `CamPredictor` owns image I/O, resizing and the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.io import (
    UNLABELED,
    load_checkpoint,
    load_once,
    load_weights,
    missing_file,
    save_checkpoint,
    weights_state,
)
from models.students.semantic import build_student, normalize, pad_to_multiple

CAM_OUTPUT_STRIDES = (8, 16, 32)
DEFAULT_THRESHOLD = 0.3  # the background threshold when a checkpoint names none
CHECKPOINT_KIND = "cam"


class CamClassifier(nn.Module):
    """Bx3xHxW normalised images -> BxCx(H/s)x(W/s) class activation maps (s = output stride)."""

    def __init__(self, student: str, num_classes: int, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in CAM_OUTPUT_STRIDES:
            raise ValueError(f"cam output_stride must be one of {CAM_OUTPUT_STRIDES}, got {output_stride}")
        encoder = build_student(student, num_classes).encoder
        if output_stride != 32:
            encoder.make_dilated(output_stride)
        self.encoder = encoder
        self.student = student
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.cam_head = nn.Conv2d(encoder.out_channels[-1], num_classes, 1, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.cam_head(self.encoder(images)[-1])


def image_logits(cams: torch.Tensor) -> torch.Tensor:
    """BxCxhxw CAMs -> BxC image-level logits (global average pooling)."""
    return cams.mean((2, 3))


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """CxHxW -> CxHxW in [0, 1]: ReLU, each class divided by its maximum (0 where it is all <= 0)."""
    cam = cam.clamp(min=0)
    return cam / cam.flatten(1).amax(1).clamp(min=1e-8)[:, None, None]


def cam_pseudo_labels(
    cams: np.ndarray | torch.Tensor,
    tags: Sequence[int],
    threshold: float,
    background_class: int | None = None,
) -> np.ndarray:
    """Normalised CAMs (CxHxW in [0, 1]) and the image's tags -> an HxW uint8 class map.

    Only tagged classes compete (the tags are the supervision; an untagged class is absent). A
    pixel takes the tagged class with the highest activation when that activation reaches
    `threshold`; below it the pixel is background: `background_class` where the dataset has one
    (PASCAL VOC's 0), UNLABELED (255) otherwise (CamVid, Cityscapes: every pixel is some class,
    so "no class is active enough" is unknown, not background). This is the constant background
    score of the CAM papers: background competes with score `threshold`.
    """
    cams = torch.as_tensor(np.asarray(cams) if not isinstance(cams, torch.Tensor) else cams).float()
    h, w = cams.shape[-2:]
    fill = UNLABELED if background_class is None else background_class
    classes = sorted({int(t) for t in tags if 0 <= int(t) < cams.shape[0]})
    if not classes:
        return np.full((h, w), fill, np.uint8)
    tagged = cams[classes]
    best, which = tagged.max(0)
    labels = torch.as_tensor(classes)[which].numpy().astype(np.uint8)
    return np.where(best.numpy() >= threshold, labels, fill).astype(np.uint8)


CONFIG_KEYS = ("student", "num_classes", "output_stride")


def save_cam_classifier(
    path: str | Path, model: CamClassifier, extra: dict[str, Any] | None = None, half: bool = False
) -> None:
    """A `cam` checkpoint: config {student, num_classes, output_stride}, the weights (fp16 with
    `half`), `extra` as metadata (base scale, threshold, class names), written atomically."""
    config = {key: getattr(model, key) for key in CONFIG_KEYS}
    save_checkpoint(path, CHECKPOINT_KIND, config, weights_state(model, half), extra)


def load_cam_classifier(path: str | Path) -> tuple[CamClassifier, dict[str, Any]]:
    """The CAM classifier a checkpoint describes (eval mode) and its metadata with the config's
    fields; errors name the file."""
    checkpoint = load_checkpoint(path, CHECKPOINT_KIND, "CAM classifier checkpoint")
    config = checkpoint.config
    model = CamClassifier(config["student"], int(config["num_classes"]), int(config["output_stride"]))
    model = load_weights(model, checkpoint.weights, path, "the CAM classifier")
    return model, checkpoint.metadata | config


@torch.inference_mode()
def predict_cams(model: nn.Module, images: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Bx3xHxW uint8 or [0, 255] float images -> BxCxHxW raw CAMs upsampled to the input size.

    With `flip` the maps of the mirrored image are mirrored back and averaged in (the usual CAM test-time
    augmentation: it evens out the left/right bias of one pass)."""
    x, (h, w) = pad_to_multiple(normalize(images))
    cams = model(x)
    if flip:
        cams = (cams + model(x.flip(-1)).flip(-1)) / 2
    cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cams[..., :h, :w]


class CamPredictor:
    """A trained CAM classifier as images -> normalised CAMs at the image size.

    Images are scaled by the checkpoint's `base_scale` (the scale it was trained at) before the
    forward; the maps come back at the original size, normalised (`normalise_cam`)."""

    def __init__(
        self,
        model: CamClassifier,
        base_scale: float = 1.0,
        class_names: list[str] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
    ):
        self.model = model.eval()
        self.base_scale = float(base_scale)
        self.num_classes = model.num_classes
        self.class_names = class_names
        self.threshold = float(threshold)  # the background threshold the checkpoint was tuned with

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> CamPredictor:
        model, meta = load_cam_classifier(path)
        threshold = float(meta.get("cam_threshold", DEFAULT_THRESHOLD))
        return cls(model, float(meta.get("base_scale", 1.0)), meta.get("class_names"), threshold)

    @classmethod
    def cached(cls, path: str | Path) -> CamPredictor:
        """`from_checkpoint`, loaded once per process while the file is unchanged (labelers are
        built per request in the service; the weights are not re-read each time)."""
        return load_once(cls.from_checkpoint, path, what="CAM checkpoint")

    def raw(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> CxHxW raw CAMs at the image size."""
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        if self.base_scale != 1.0:
            size = (max(32, round(h * self.base_scale)), max(32, round(w * self.base_scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        cams = predict_cams(self.model, x)
        return F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)[0]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> CxHxW CAMs in [0, 1] at the image size."""
        return normalise_cam(self.raw(image))

    def maps_and_scores(self, image: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Both from one forward: the normalised CAMs (CxHxW) and the C image-level class
        probabilities (sigmoid of the GAP logits)."""
        raw = self.raw(image)
        return normalise_cam(raw), torch.sigmoid(image_logits(raw[None]))[0].numpy()

    def scores(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> C image-level class probabilities (sigmoid of the GAP logits)."""
        return self.maps_and_scores(image)[1]


SHIPPED_CAM = Path(__file__).resolve().parent / "weights" / "camvid_cam.pt"


def cam_predictor(path: str | Path | None, user: str = "tags") -> CamPredictor:
    """The CAM classifier a labeler's `cam` option names (None: the shipped CamVid one), loaded
    once per process; the error says how to get one."""
    path = Path(path or SHIPPED_CAM)
    if not path.is_file():
        raise ValueError(
            f"{user}: needs a CAM classifier file and {missing_file(path, 'checkpoint')}; train one with "
            "`sesam train` mode cam and give it as the `cam` option"
        )
    return CamPredictor.cached(path)
