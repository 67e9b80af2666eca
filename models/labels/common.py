"""What every labeler shares: the result type and turning sparse weak labels into SAM prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from models.engine import ImageHandle, Predictions, Prompt, PromptableSegmenter
from models.io import UNLABELED
from models.labels.sampling import even_points_along
from models.labels.schema import WeakLabels
from models.runtime.deadline import check_deadline


@dataclass
class RefineResult:
    """A dense label map (HxW uint8, 255 = unlabeled) and what produced it, per instance."""

    labels: np.ndarray
    instances: list[dict[str, Any]] = field(default_factory=list)
    decoder_calls: int = 0
    prompts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # a labeler's own counts (e.g. proposals)

    def stats(self) -> dict[str, Any]:
        labelled = self.labels != UNLABELED
        return self.extra | {
            "labelled_fraction": float(labelled.mean()),
            "instances": len(self.instances),
            "prompts": self.prompts,
            "decoder_calls": self.decoder_calls,
            "classes": sorted(int(c) for c in np.unique(self.labels[labelled])),
        }


def ensure_handle(engine: PromptableSegmenter, image: ImageHandle | np.ndarray) -> ImageHandle:
    return image if isinstance(image, ImageHandle) else engine.embed([image])[0]


def sparse_prompts(
    weak: WeakLabels, scribble_points: int = 10
) -> tuple[list[Prompt], list[tuple[str, int, int]]]:
    """One prompt per point, per scribble (up to `scribble_points` points spread along it) and per box.

    Returns the prompts and, for each, (kind, index in its list, class id).
    """
    prompts, origin = [], []
    for i, p in enumerate(weak.points):
        prompts.append(Prompt(points=[[p.x, p.y]], labels=[1]))
        origin.append(("point", i, p.class_id))
    for i, s in enumerate(weak.scribbles):
        pts = even_points_along(s.points, scribble_points)
        prompts.append(Prompt(points=pts, labels=np.ones(len(pts), dtype=int)))
        origin.append(("scribble", i, s.class_id))
    for i, b in enumerate(weak.boxes):
        prompts.append(Prompt(box=np.asarray(b.box)))
        origin.append(("box", i, b.class_id))
    return prompts, origin


def box_clip(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The part of a mask inside a box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    out = np.zeros_like(mask)
    rs = slice(int(np.floor(y0)), int(np.ceil(y1)))
    cs = slice(int(np.floor(x0)), int(np.ceil(x1)))
    out[rs, cs] = mask[rs, cs]
    return out


def box_instances(
    engine: PromptableSegmenter,
    handle: ImageHandle,
    boxes: np.ndarray,
    class_ids: list[int],
    scores: list[float],
    result: RefineResult,
) -> list[tuple[int, np.ndarray, float]]:
    """Boxes Nx4 (x0, y0, x1, y1) -> SAM box prompts -> one mask each (SAM's single output for a
    box, clipped to the box): [(class id, HxW bool, score)]. Books calls on `result`."""
    if len(boxes) == 0:
        return []
    if len(class_ids) != len(boxes) or len(scores) != len(boxes):
        raise ValueError("box_instances: boxes, class_ids and scores differ in length")
    prompts = [Prompt(box=np.asarray(b, float)) for b in boxes]
    out = []
    for start, chunk in predict_chunks(engine, handle, prompts, result, multimask=False):
        for i in range(start, start + len(chunk)):
            box = tuple(float(v) for v in boxes[i])
            out.append((int(class_ids[i]), box_clip(chunk.masks[i - start, 0], box), float(scores[i])))
    return out


def count_calls(engine: PromptableSegmenter) -> int:
    return engine.stats.decoder_calls


def predict_counted(
    engine: PromptableSegmenter,
    handle: ImageHandle,
    prompts: list[Prompt],
    result: RefineResult | None,
    multimask: bool = True,
) -> Predictions:
    """engine.predict that books its decoder calls and prompt count on the result (if given)."""
    before = count_calls(engine)
    out = engine.predict(handle, prompts, multimask=multimask)
    if result is not None:
        result.decoder_calls += count_calls(engine) - before
        result.prompts += len(prompts)
    return out


# bytes one decoder chunk may hold: its full-size candidate masks (bool) and their 256x256
# float32 low-res logits; a labeler's memory is O(chunk), not O(prompts)
MAX_MASK_BYTES = 128 * 1024**2
LOGIT_BYTES = 256 * 256 * 4


def chunk_size(
    image_size: tuple[int, int],
    multimask: bool,
    max_mask_bytes: int | None = None,
    max_prompts: int | None = None,
) -> int:
    """Prompts per chunk: as many as keep P x (3|1) x H x W bool masks and their 256x256 float32
    logits under `max_mask_bytes` (default MAX_MASK_BYTES), at most `max_prompts`, at least one."""
    h, w = image_size
    budget = MAX_MASK_BYTES if max_mask_bytes is None else max_mask_bytes
    size = max(1, budget // ((3 if multimask else 1) * (h * w + LOGIT_BYTES)))
    return size if max_prompts is None else max(1, min(size, max_prompts))


def predict_chunks(
    engine: PromptableSegmenter,
    handle: ImageHandle,
    prompts: list[Prompt],
    result: RefineResult | None = None,
    multimask: bool = True,
    max_mask_bytes: int | None = None,
    max_prompts: int | None = None,
) -> Iterator[tuple[int, Predictions]]:
    """`predict_counted` in chunks of `chunk_size` prompts (masks and logits under `max_mask_bytes`,
    at most `max_prompts`): yields (index of the chunk's first prompt, its Predictions). Checks the
    deadline (`models.runtime.deadline`) before each chunk, so work past it stops here. Every labeler
    decodes through this, so its memory is O(chunk), not O(prompts)."""
    size = chunk_size(handle.original_size, multimask, max_mask_bytes, max_prompts)
    for start in range(0, len(prompts), size):
        check_deadline()
        yield start, predict_counted(engine, handle, prompts[start : start + size], result, multimask)


class PackedMasks(Sequence[np.ndarray]):
    """HxW bool masks held at one bit per pixel (`np.packbits`); each is unpacked when read, so a
    list of many full-size masks costs 1/8 of its bool size plus one mask at a time."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self._bits: list[np.ndarray] = []

    def append(self, mask: np.ndarray) -> None:
        if mask.shape != self.size:
            raise ValueError(f"PackedMasks: a {mask.shape} mask in a list of {self.size} masks")
        self._bits.append(np.packbits(mask))

    def select(self, indices: Sequence[int]) -> PackedMasks:
        """The masks at `indices`, in that order (still packed)."""
        out = PackedMasks(self.size)
        out._bits = [self._bits[i] for i in indices]
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        h, w = self.size
        return np.unpackbits(self._bits[index], count=h * w).view(bool).reshape(h, w)


def confident_labels(probs: torch.Tensor | np.ndarray, threshold: float, class_axis: int = 0):
    """Probabilities with classes on `class_axis` (CxHxW, or BxCxHxW with class_axis=1) -> the
    argmax class where its probability >= threshold, UNLABELED elsewhere. A torch tensor gives an
    int64 tensor (loss targets), a numpy array a uint8 class map."""
    if isinstance(probs, torch.Tensor):
        conf, cls = probs.max(class_axis)
        return torch.where(conf >= threshold, cls, torch.full_like(cls, UNLABELED))
    conf, cls = probs.max(class_axis), probs.argmax(class_axis)
    return np.where(conf >= threshold, cls, UNLABELED).astype(np.uint8)


def check_weak_kinds(labeler: Any, weak: WeakLabels, source: str = "weak") -> None:
    """Refuse weak labels that hold no kind the labeler reads (e.g. only image tags for SeSAM),
    rather than answering an empty map."""
    given = weak.kinds()
    if not set(given) & labeler.reads:
        raise ValueError(
            f"{source}: {', '.join(given) or 'no labels'} given; the {labeler.name} labeler reads "
            f"{', '.join(sorted(labeler.reads))}"
            + (" (image tags: use sepl, weaksam or grounded)" if given == ["tags"] else "")
        )
