"""What every backend shares: input conversion, the content-hash embedding cache, validation, counters.

A backend implements three hooks: `_encode` (a list of HxWx3 uint8 images -> payloads, in as few
encoder calls as it can), `_payload_nbytes`, and `_decode` (one payload + validated prompts ->
Predictions). SAM backends share `BatchedDecoder._decode`, which groups prompts by layout and only
asks the backend to decode one group (`_decode_group_into`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.engine.cache import DEFAULT_CACHE_BYTES, EmbeddingCache, content_key
from models.engine.types import EngineStats, ImageHandle, Predictions, Prompt
from models.engine.validation import as_rgb_uint8, validate_prompts
from models.runtime.deadline import check_deadline

# every backend's default working long side. The classical priors: every image they were tuned on
# (CamVid 480x360, Penn-Fudan up to 1017 wide, COCO up to 640) is encoded at its own size, a larger
# one is reduced, which bounds a 16-megapixel upload to what a 1024x683 image costs
# (benchmarks/results/working_side.md). SAM: its encoder sees a 1024 long side anyway; reducing
# first keeps its full-size logits (P x 3 x H x W float32) from growing with the upload.
DEFAULT_WORKING_SIDE = 1024
# dtypes the PyTorch SAM engines may keep their cached image state in (decoded in float32)
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cache_torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `cache_dtype` setting; ValueError naming the choices."""
    if name not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype {name!r} unknown; choose one of {sorted(CACHE_DTYPES)}")
    return CACHE_DTYPES[name]


def cache_namespace(name: str, fingerprint: str, cache_dtype: str) -> str:
    """The cache namespace of a PyTorch SAM engine: `name:fingerprint`, plus `:dtype` for a
    half-precision cache; float32 keeps the namespace it always had (on-disk label caches hash it)."""
    return f"{name}:{fingerprint}" + ("" if cache_dtype == "float32" else f":{cache_dtype}")


@torch.no_grad()
def weights_fingerprint(module: torch.nn.Module) -> str:
    """16 hex digits of a model's weights, so that two models never share cache keys: every
    parameter and buffer by name and shape, its first 16384 values, and its float64 sum and
    norm (computed where the weights live: no copy of a large model to the host). A
    model fine-tuned in any one tensor gets another fingerprint."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[:16384].float().cpu().numpy().tobytes())
        if flat.is_floating_point():
            norm = torch.linalg.vector_norm(flat, dtype=torch.float64)
            digest.update(np.array([flat.sum(dtype=torch.float64).item(), norm.item()]).tobytes())
        else:
            digest.update(np.array([flat.sum(dtype=torch.int64).item()]).tobytes())
    return digest.hexdigest()[:16]


def to_cache(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A tensor to keep in the cache: its own copy (never a view of the encoder's batch) in `dtype`."""
    return t.clone() if t.dtype == dtype else t.to(dtype)


PRIOR_WORKING_SIDE = DEFAULT_WORKING_SIDE


@dataclass(frozen=True)
class Reduced:
    """A payload computed on an image reduced to the engine's working size: `inner` is the
    backend's own payload for `working_size`; `original_size` is the image the user sent."""

    inner: Any
    original_size: tuple[int, int]
    working_size: tuple[int, int]


def backend_payload(payload: Any) -> Any:
    """The backend's own payload of a cached image, whether it was reduced (`Reduced`) or not."""
    return payload.inner if isinstance(payload, Reduced) else payload


def working_size(size: tuple[int, int], side: int | None) -> tuple[int, int]:
    """(H, W) with the long side at most `side` (aspect kept, at least 1 pixel); unchanged when
    it already fits or `side` is None."""
    h, w = size
    if side is None or max(h, w) <= side:
        return h, w
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def reduce_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size, antialiased (PIL's box-filtered reduce, then Lanczos)."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0))


def upsample_nearest(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """...xhxw masks -> ...xHxW by nearest neighbour (pixel centres)."""
    h, w = masks.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.intp), w - 1)
    return masks[..., rows[:, None], cols[None, :]]


def scale_prompt(prompt: Prompt, sx: float, sy: float, size: tuple[int, int]) -> Prompt:
    """A prompt in original pixels -> the working frame (points and box scaled, kept inside)."""
    h, w = size
    points = None
    if prompt.points is not None:
        points = np.clip(prompt.points * (sx, sy), 0, (w, h))
    box = None
    if prompt.box is not None:
        box = np.clip(prompt.box * (sx, sy, sx, sy), 0, (w, h, w, h))
    return Prompt(points=points, labels=prompt.labels, box=box, mask_logits=prompt.mask_logits)


class CachedSegmenter(ABC):
    """Base of every PromptableSegmenter backend.

    `working_side`: images with a longer side are reduced to it before `_encode` (memory and time
    stay bounded for any upload); prompts are mapped into that frame and masks come back at the
    image's own size. None: every image is encoded at its own size.
    """

    name: str = "base"

    def __init__(
        self,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_prompts: int | None = None,
        cache: EmbeddingCache | None = None,
        working_side: int | None = None,
    ) -> None:
        if working_side is not None and working_side < 16:
            raise ValueError(f"working_side must be >= 16 pixels or None, got {working_side}")
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self.max_prompts = max_prompts
        self.working_side = working_side
        self.stats = EngineStats()

    @property
    def namespace(self) -> str:
        """Distinguishes cache keys of different models that might share one cache."""
        return self.name

    @property
    def cache_space(self) -> str:
        """What embeddings are keyed by besides the pixels: the model and the working side."""
        return self.namespace if self.working_side is None else f"{self.namespace}@{self.working_side}"

    @property
    def answer_key(self) -> str:
        """Everything an answer depends on besides the image and the prompts: the model
        (`namespace`), the working side, and decoding options where a backend has them. Stores of
        answers (labels on disk) key on it; the embedding cache needs only the first two."""
        return self.cache_space

    # -- hooks -----------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, images: list[np.ndarray]) -> list[Any]: ...

    @abstractmethod
    def _payload_nbytes(self, payload: Any) -> int: ...

    @abstractmethod
    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions: ...

    def _reduce(self, image: np.ndarray) -> np.ndarray:
        """The image at the working size (itself when it fits): antialiased, `reduce_image`. SAM
        backends reduce with SAM's own resize instead, so their encoder input stays the same."""
        return reduce_image(image, working_size(image.shape[:2], self.working_side))

    # -- the contract ------------------------------------------------------------------------
    def embed(self, images: Sequence[np.ndarray]) -> list[ImageHandle]:
        """Embed images (any layout `as_rgb_uint8` accepts); cached ones cost no encoder call."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
            raise ValueError("images: expected a sequence of images; wrap a single image in a list")
        arrays = [as_rgb_uint8(img, f"images[{i}]") for i, img in enumerate(images)]
        space = self.cache_space
        keys = [content_key(a, space) for a in arrays]
        payloads: dict[str, Any] = {}
        todo: dict[str, np.ndarray] = {}
        for key, arr in zip(keys, arrays):
            if key in payloads or key in todo:
                continue
            cached = self.cache.get(key)
            if cached is None:
                self.stats.cache_misses += 1
                todo[key] = arr
            else:
                self.stats.cache_hits += 1
                payloads[key] = cached
        if todo:
            reduced = [self._reduce(a) for a in todo.values()]
            for key, arr, small, payload in zip(todo, todo.values(), reduced, self._encode(reduced)):
                if small.shape[:2] != arr.shape[:2]:
                    payload = Reduced(payload, arr.shape[:2], small.shape[:2])
                self.cache.put(key, payload, self.payload_nbytes(payload))
                payloads[key] = payload
        return [
            ImageHandle(k, (a.shape[0], a.shape[1]), self.name, payloads[k], space)
            for k, a in zip(keys, arrays)
        ]

    def lookup(self, key: str) -> ImageHandle | None:
        payload = self.cache.peek(key)
        if payload is None:
            return None
        return ImageHandle(key, self._payload_size(payload), self.name, payload, self.cache_space)

    def _payload_size(self, payload: Any) -> tuple[int, int]:
        return tuple(payload.original_size)

    def payload_nbytes(self, payload: Any) -> int:
        """Bytes a payload holds (what the cache budget counts), reduced or not."""
        return self._payload_nbytes(payload.inner if isinstance(payload, Reduced) else payload)

    def predict(
        self, image: ImageHandle | np.ndarray, prompts: Sequence[Prompt], multimask: bool = True
    ) -> Predictions:
        """Masks for every prompt on one image; see `Predictions` for shapes."""
        handle = image if isinstance(image, ImageHandle) else self.embed([image])[0]
        if handle.backend != self.name:
            raise ValueError(f"image handle comes from backend {handle.backend!r}, not {self.name!r}")
        if handle.space and handle.space != self.cache_space:
            raise ValueError(
                f"image handle was embedded by another model ({handle.space!r}, not {self.cache_space!r}): "
                "embed the image with this engine"
            )
        prompts = list(prompts) if not isinstance(prompts, Prompt) else prompts
        validate_prompts(prompts, handle.original_size, self.max_prompts)
        if not prompts:
            return Predictions.empty(handle.original_size, multimask)
        payload = handle.payload
        if not isinstance(payload, Reduced):
            return self._decode(handle, prompts, multimask)
        (h, w), (wh, ww) = payload.original_size, payload.working_size
        inner = ImageHandle(handle.key, payload.working_size, handle.backend, payload.inner, handle.space)
        scaled = [scale_prompt(p, ww / w, wh / h, payload.working_size) for p in prompts]
        out = self._decode(inner, scaled, multimask)
        out.masks = upsample_nearest(out.masks, payload.original_size)
        return out

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "stats": self.stats.as_dict(), "cache": self.cache.info()}


class BatchedDecoder(CachedSegmenter):
    """A backend with a real batched decoder (SAM in torch, ONNX Runtime, TensorRT, Triton).

    Prompts with the same layout (number of points, box or not) give the same token count and go
    through the decoder together, `decode_batch` at a time; a backend implements one such call.
    """

    decode_batch: int = 64
    # SAM 2: the encoder stretches each axis to its input side on its own (no aspect kept, no padding)
    stretches: bool = False

    def _reduce(self, image: np.ndarray) -> np.ndarray:
        """SAM's own resize (`ResizeLongestSide`, PIL bilinear) to the working side: at the default
        1024 the encoder sees exactly the pixels it would see unreduced, and only the last step
        (masks to the image's size) changes, nearest on the mask instead of bilinear on the logits.
        A backend that `stretches` (SAM 2) has each axis reduced on its own to at most the working
        side, with the antialiased bilinear resize of its own preprocessing (`SAM2Transforms`): an
        axis shorter than it is kept whole, as SAM 2 would see it, rather than shrunk with the long
        one and stretched back up."""
        if self.working_side is None or max(image.shape[:2]) <= self.working_side:
            return image
        if self.stretches:
            h, w = image.shape[:2]
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            size = (min(h, self.working_side), min(w, self.working_side))
            t = torch.nn.functional.interpolate(t, size, mode="bilinear", align_corners=False, antialias=True)
            return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        from models.engine.transforms import ResizeLongestSide

        return ResizeLongestSide(self.working_side).apply_image(image)

    @abstractmethod
    def _decode_group_into(
        self, payload: Any, prompts: list[Prompt], multimask: bool, out: Predictions, idx: list[int]
    ) -> None:
        """Decode prompts of one layout and write rows `idx` of every array of `out`."""

    def _decode(self, handle: ImageHandle, prompts: list[Prompt], multimask: bool) -> Predictions:
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            groups[(prompt.num_points, prompt.box is not None)].append(i)
        out = Predictions.zeros(len(prompts), handle.original_size, multimask)
        for indices in groups.values():
            for start in range(0, len(indices), self.decode_batch):
                check_deadline()  # a request past its deadline stops between decoder calls
                idx = indices[start : start + self.decode_batch]
                self._decode_group_into(handle.payload, [prompts[i] for i in idx], multimask, out, idx)
                self.stats.decoder_calls += 1
                self.stats.prompts_decoded += len(idx)
        return out


def stability_score(logits: torch.Tensor | np.ndarray, threshold: float = 0.0, offset: float = 1.0):
    """SAM's stability: IoU of the mask thresholded at threshold+offset vs threshold-offset.

    logits: ...xHxW (a torch tensor or a numpy array; the answer has the same type, float32). 0
    where even the loose mask is empty.
    """
    inner = (logits > threshold + offset).sum((-1, -2))
    outer = (logits > threshold - offset).sum((-1, -2))
    if isinstance(logits, torch.Tensor):
        return (inner / outer.clamp(min=1)).float()
    return (inner / np.maximum(outer, 1)).astype(np.float32)
