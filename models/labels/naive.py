"""The paper's naive SAM baseline: weak labels straight in as prompts, SAM's best-scored mask out.

Each point is a prompt; a scribble is a point set (up to `scribble_points` spread along it); a box
is a box prompt (mask clipped to the box); each class of a coarse mask is one mask prompt. The
candidate SAM scores highest is kept. Merged like every labeler (weak labels always win).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.config import setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.engine.lowres import engine_mask_logits
from models.io import UNLABELED
from models.labels.common import RefineResult, box_clip, ensure_handle, predict_chunks, sparse_prompts
from models.labels.merge import OVERLAP_RULES, Instance, merge_instances
from models.labels.schema import WeakLabels


@dataclass
class NaiveOptions:
    """The naive labeler: every weak label prompts SAM once, the best-scored candidate is kept."""

    scribble_points: int = setting(10, help="points spread along a scribble")
    overlap: str = setting("score", help="class overlaps: score or unlabeled")

    def validate(self, source: str = "naive options") -> None:
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"{source}: overlap {self.overlap!r} unknown; choose one of {OVERLAP_RULES}")


class NaiveLabeler:
    name = "naive"
    reads = frozenset({"points", "scribbles", "boxes", "coarse"})  # weak-label kinds it uses
    # kinds it decodes one prompt for per label (`sparse_prompts`): what a server counts up front
    prompts_each = frozenset({"points", "scribbles", "boxes"})

    def __init__(self, engine: PromptableSegmenter, options: NaiveOptions | None = None) -> None:
        self.engine = engine
        self.options = options or NaiveOptions()

    def refine(self, image: ImageHandle | np.ndarray, weak: WeakLabels, **_: object) -> RefineResult:
        handle = ensure_handle(self.engine, image)
        result = RefineResult(labels=np.empty(0))
        prompts, origin = sparse_prompts(weak, self.options.scribble_points)
        if weak.coarse is not None:
            for c in np.unique(weak.coarse):
                if c != UNLABELED:
                    prompts.append(Prompt(mask_logits=engine_mask_logits(self.engine, weak.coarse == c)))
                    origin.append(("coarse", -1, int(c)))
        instances = []
        for start, out in predict_chunks(self.engine, handle, prompts, result):
            for i in range(len(out)):
                kind, j, c = origin[start + i]
                best = int(np.argmax(out.iou[i]))
                mask = out.masks[i, best]
                if kind == "box":
                    mask = box_clip(mask, weak.boxes[j].box)
                instances.append(Instance(c, mask.copy(), float(out.iou[i, best])))
                result.instances.append(
                    {
                        "class_id": c,
                        "kind": kind,
                        "candidate": best,
                        "iou": round(float(out.iou[i, best]), 4),
                        "area": int(mask.sum()),
                    }
                )
        result.labels = merge_instances(weak.size, instances, weak.sparse_map(), self.options.overlap)
        return result
