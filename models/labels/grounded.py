"""Grounded tags (Sun et al., paper 003): image tags -> text prompts -> open-vocabulary boxes ->
SAM box prompts -> a class map.

1. Text: every tagged class contributes its phrases (`models/labels/data/class_prompts.yaml`: the
   class's name plus the paper's assist words, e.g. dining table -> bowl, plate, food; or the
   user's `phrases` option). A box found for any phrase belongs to its class.
2. Boxes, from a pluggable `BoxSource`:
   - `grounding-dino`: Grounding DINO from HF `transformers`, weights from the path the user
     gives (`detector`); a query is kept when its best text-token score >= `box_threshold` (0.3)
     and its phrase is the one whose tokens score highest, >= `text_threshold` (0.25): the
     paper's settings;
   - `owlv2`: OWLv2 from HF `transformers` (weights by path), a box kept at score >= `box_threshold`;
   - `user`: the boxes of the weak labels (`boxes`, each with its class): no detector at all.
   A source that needs weights refuses to run without them, and says so. A detector is loaded once
   per process and checkpoint folder (`models.io.load_once`), whatever the thresholds: they are
   applied per call, so labelers with different thresholds share one model.
3. Every box prompts SAM; its mask (clipped to the box) paints the box's class. `paint`: `order`
   paints in the detector's order so later boxes overwrite earlier ones (the authors' code), `score`
   lets the higher-scored box win overlaps. Weak labels win over both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.config import setting
from models.engine import ImageHandle, PromptableSegmenter
from models.io import UNLABELED, load_once
from models.labels.common import RefineResult, box_instances, ensure_handle
from models.labels.merge import Instance, apply_weak_labels, merge_instances
from models.labels.schema import WeakLabels

CLASS_PROMPTS = Path(__file__).resolve().parent / "data" / "class_prompts.yaml"
BOX_SOURCES = ("grounding-dino", "owlv2", "user")
PAINT_RULES = ("order", "score")


@cache
def class_prompts(vocabulary: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(class name, phrases) per class id of a vocabulary in `class_prompts.yaml` (voc, camvid, ...)."""
    import yaml

    data = yaml.safe_load(CLASS_PROMPTS.read_text())
    if vocabulary not in data:
        raise ValueError(f"vocabulary {vocabulary!r} unknown; choose one of {sorted(data)} or give `phrases`")
    return tuple((c["name"], tuple(c["phrases"])) for c in data[vocabulary])


def text_queries(tags: Sequence[int], prompts: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """The phrases to ask for and the class each belongs to, tags in ascending order."""
    phrases, owners = [], []
    for t in sorted({int(t) for t in tags}):
        if t >= len(prompts):
            raise ValueError(f"weak: tag {t} has no text prompt ({len(prompts)} classes in the vocabulary)")
        for p in prompts[t]:
            phrases.append(str(p))
            owners.append(t)
    return phrases, owners


@dataclass
class Boxes:
    """Detections: boxes Nx4 (x0, y0, x1, y1) in image pixels, scores N, phrase index N."""

    boxes: np.ndarray
    scores: np.ndarray
    phrase: np.ndarray


class BoxSource(Protocol):
    def __call__(self, image: np.ndarray, phrases: list[str]) -> Boxes: ...


def _require_weights(path: str | None, kind: str) -> Path:
    if not path:
        raise ValueError(
            f"grounded: box source {kind} needs its weights; give the folder of a HF checkpoint as the "
            "`detector` option (nothing is downloaded), or use box_source: user with your own boxes"
        )
    if not Path(path).is_dir():
        raise ValueError(
            f"grounded: detector {path}: no such folder (a HF checkpoint with config and processor)"
        )
    return Path(path)


def _cxcywh_to_xyxy(boxes: torch.Tensor, width: float, height: float) -> np.ndarray:
    cx, cy, w, h = boxes.unbind(-1)
    out = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor(
        [width, height] * 2
    )
    return out.numpy()


class GroundingDinoBoxes:
    """Grounding DINO (HF `transformers`) from a local checkpoint folder; the thresholds given to
    the constructor are the defaults of each call, which may give its own."""

    def __init__(self, path: str | None, box_threshold: float = 0.3, text_threshold: float = 0.25) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        folder = _require_weights(path, "grounding-dino")
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    def token_spans(self, phrases: list[str]) -> list[tuple[int, int]]:
        """Token index ranges of each phrase in the caption "p1 . p2 . " ([CLS] first)."""
        spans, start = [], 1
        for p in phrases:
            n = len(self.processor.tokenizer.tokenize(p))
            spans.append((start, start + n))
            start += n + 1  # the "." after each phrase
        return spans

    @torch.inference_mode()
    def __call__(
        self,
        image: np.ndarray,
        phrases: list[str],
        box_threshold: float | None = None,
        text_threshold: float | None = None,
    ) -> Boxes:
        box_threshold = self.box_threshold if box_threshold is None else box_threshold
        text_threshold = self.text_threshold if text_threshold is None else text_threshold
        h, w = image.shape[:2]
        caption = " . ".join(phrases) + " ."
        inputs = self.processor(images=image, text=caption, return_tensors="pt")
        out = self.model(**inputs)
        probs = out.logits[0].sigmoid()  # Q x T
        per_phrase = torch.stack([probs[:, a:b].amax(1) for a, b in self.token_spans(phrases)], 1)  # Q x P
        best, phrase = per_phrase.max(1)
        keep = (probs.amax(1) >= box_threshold) & (best >= text_threshold)
        boxes = _cxcywh_to_xyxy(out.pred_boxes[0][keep], w, h)
        return Boxes(boxes, best[keep].numpy(), phrase[keep].numpy())


class Owlv2Boxes:
    """OWLv2 (HF `transformers`) from a local checkpoint folder; boxes live on the padded square.
    The constructor's threshold is each call's default."""

    def __init__(self, path: str | None, box_threshold: float = 0.3) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        folder = _require_weights(path, "owlv2")
        self.processor = Owlv2Processor.from_pretrained(folder)
        self.model = Owlv2ForObjectDetection.from_pretrained(folder).eval()
        self.box_threshold = box_threshold

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, phrases: list[str], box_threshold: float | None = None) -> Boxes:
        box_threshold = self.box_threshold if box_threshold is None else box_threshold
        h, w = image.shape[:2]
        inputs = self.processor(text=[phrases], images=image, return_tensors="pt")
        out = self.model(**inputs)
        probs = out.logits[0].sigmoid()  # Q x P
        best, phrase = probs.max(1)
        keep = best >= box_threshold
        side = max(h, w)  # OWLv2 pads to a square at the bottom/right
        boxes = _cxcywh_to_xyxy(out.pred_boxes[0][keep], side, side)
        return Boxes(boxes, best[keep].numpy(), phrase[keep].numpy())


@dataclass
class GroundedOptions:
    """The grounded-tags labeler's settings (thresholds: the paper's Grounding DINO values)."""

    box_source: str = setting(
        "grounding-dino", help="grounding-dino, owlv2 (weights by path) or user (your boxes)"
    )
    detector: str | None = setting(None, help="the HF checkpoint folder of the box source")
    vocabulary: str = setting(
        "camvid", help="class prompts from models/labels/data/class_prompts.yaml: camvid, voc, ..."
    )
    phrases: list[list[str]] | None = setting(None, help="per class id its phrases (instead of `vocabulary`)")
    box_threshold: float = setting(0.3, help="a box's lowest score")
    text_threshold: float = setting(0.25, help="grounding-dino: its phrase's lowest token score")
    paint: str = setting("order", help="order (later boxes overwrite, the authors') or score")

    def validate(self, source: str = "grounded options") -> None:
        if self.box_source not in BOX_SOURCES:
            raise ValueError(f"{source}: box_source {self.box_source!r} unknown; choose one of {BOX_SOURCES}")
        if self.paint not in PAINT_RULES:
            raise ValueError(f"{source}: paint {self.paint!r} unknown; choose one of {PAINT_RULES}")
        if self.box_source != "user":
            _require_weights(self.detector, self.box_source)

    def prompts(self) -> list[tuple[str, ...]]:
        if self.phrases is not None:
            return [tuple(p) for p in self.phrases]
        return [phrases for _, phrases in class_prompts(self.vocabulary)]


def paint_in_order(size: tuple[int, int], found: list[tuple[int, np.ndarray, float]]) -> np.ndarray:
    """The authors' painting: masks in order, each overwriting what came before."""
    out = np.full(size, UNLABELED, np.uint8)
    for c, mask, _ in found:
        out[mask] = c
    return out


class GroundedLabeler:
    name = "grounded"
    reads = frozenset({"tags", "boxes"})
    # its prompts are the detector's boxes (the user's with box_source user): not counted up front
    prompts_each: frozenset[str] = frozenset()

    def __init__(
        self,
        engine: PromptableSegmenter,
        options: GroundedOptions | None = None,
        source: BoxSource | None = None,
    ) -> None:
        self.engine = engine
        self.options = options or GroundedOptions()
        self.options.validate()
        self._source = source
        self._given = source is not None

    @property
    def source(self) -> BoxSource:
        """The box source: the one given, else the detector loaded once per checkpoint folder (shared
        by every labeler in the process, whatever its thresholds)."""
        o = self.options
        if self._source is None and o.box_source != "user":
            loader = GroundingDinoBoxes if o.box_source == "grounding-dino" else Owlv2Boxes
            self._source = load_once(loader, o.detector, what=f"{o.box_source} checkpoint folder")
        return self._source

    def detect(self, image: np.ndarray, phrases: list[str]) -> Boxes:
        """The source's boxes for the phrases, at this labeler's thresholds (a given source is called
        as it is)."""
        o = self.options
        if self._given:
            return self.source(image, phrases)
        if o.box_source == "grounding-dino":
            return self.source(image, phrases, box_threshold=o.box_threshold, text_threshold=o.text_threshold)
        return self.source(image, phrases, box_threshold=o.box_threshold)

    def boxes(self, image: np.ndarray | None, weak: WeakLabels) -> tuple[np.ndarray, list[int], list[float]]:
        """The boxes to prompt SAM with, their classes and scores."""
        if self.options.box_source == "user":
            if not weak.boxes:
                raise ValueError("weak: box_source user reads the weak labels' boxes; none given")
            boxes = np.asarray([b.box for b in weak.boxes], float).reshape(-1, 4)
            return boxes, [b.class_id for b in weak.boxes], [1.0] * len(weak.boxes)
        if image is None:
            raise ValueError("grounded: the detector needs the image pixels, not only a handle")
        if not weak.tags:
            raise ValueError("weak: the grounded labeler with a detector reads image tags; none given")
        phrases, owners = text_queries(weak.tags, self.options.prompts())
        if not phrases:
            return np.zeros((0, 4)), [], []
        found = self.detect(image, phrases)
        h, w = image.shape[:2]
        boxes = np.clip(np.asarray(found.boxes, float).reshape(-1, 4), 0, [w, h, w, h])
        real = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # e.g. OWLv2's padding
        return (
            boxes[real],
            [owners[int(i)] for i in found.phrase[real]],
            [float(s) for s in found.scores[real]],
        )

    def refine(self, image: ImageHandle | np.ndarray, weak: WeakLabels, **_: object) -> RefineResult:
        handle = ensure_handle(self.engine, image)
        pixels = image if isinstance(image, np.ndarray) else None
        result = RefineResult(labels=np.empty(0))
        boxes, classes, scores = self.boxes(pixels, weak)
        found = box_instances(self.engine, handle, boxes, classes, scores, result)
        result.instances = [
            {
                "class_id": c,
                "box": [round(float(v), 1) for v in b],
                "score": round(s, 4),
                "area": int(m.sum()),
            }
            for (c, m, s), b in zip(found, boxes)
        ]
        weak_map = weak.sparse_map()
        if self.options.paint == "order":
            labels = apply_weak_labels(paint_in_order(weak.size, found), weak_map)
        else:
            labels = merge_instances(weak.size, [Instance(c, m, s) for c, m, s in found], weak_map, "score")
        result.labels = labels
        return result
