"""SeSAM labels (paper 000, DIGEST steps 1-4), with every ablation switch of the paper.

1. Points and scribbles are sparse: each prompts SAM (a scribble as points spread along it) and the
   SMALLEST non-empty of the 3 candidates becomes its initial coarse mask (precision first). A box
   gives the best-scoring candidate clipped to the box. Coarse masks are used as given. Optionally
   (training) the coarse masks are extended with a teacher's confident pixels (>= theta2).
2. Instance separation: each class mask is split into 8-connected components; one prompt per
   component (switch off to prompt per class).
3. Prompts per component: K points sampled by `sampling` (default skeleton-grid), or the
   component's box, or the component as a mask prompt.
4. Selection among the 3 candidates by `selection` (default coverage/compatibility, tau1 0.3,
   tau2 0.7, fallback: highest compatibility).
Two additions to the paper, off by default (the paper's rule). With `exclude_conflicts`, a
candidate that holds a pixel the weak labels give another class is never chosen, in step 1 or
step 4: such a candidate has leaked across a boundary the weak labels themselves mark (a box's
candidates are clipped to the box first). Where every candidate conflicts, step 1 keeps the weak
pixels alone (a box adds nothing) and step 4 keeps the component it was prompted from, at score 0
(any chosen mask overlapping it wins). With `negatives` > 0, the nearest weak points of other
classes join every point prompt (not box or mask prompts) as negative clicks. Both trade coverage
for precision (measured in docs/engine.md).
Then the instance masks are merged (models.labels.merge): overlaps by score (the selected mask's
compatibility) or left unlabeled, and weak labels always win. All prompts of one stage go to the
engine in one `predict` (chunked by memory); how many decoder calls that makes is the engine's
choice (SAM 1: one per prompt layout; SAM 2.1 on CPU: one per prompt, where batching does not pay).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from models.config import lookup, setting
from models.engine import ImageHandle, Prompt, PromptableSegmenter
from models.engine.lowres import engine_mask_logits
from models.io import UNLABELED
from models.labels.common import (
    RefineResult,
    box_clip,
    confident_labels,
    ensure_handle,
    predict_chunks,
    sparse_prompts,
)
from models.labels.merge import OVERLAP_RULES, Instance, merge_instances
from models.labels.sampling import SAMPLERS, connected_components, even_points_along
from models.labels.schema import WeakLabels
from models.labels.selection import SELECTORS, choose_by_coverage, coverage_compatibility, select_smallest

PROMPT_TYPES = ("points", "box", "mask")


@dataclass
class SeSAMOptions:
    """Every choice of the SeSAM labeler; defaults are the paper's where it gives one."""

    k: int = setting(5, help="points sampled per component (step 3)")
    sampling: str = setting("skeleton-grid", help=f"point sampler, one of {', '.join(SAMPLERS)}")
    selection: str = setting("coverage", help=f"candidate selection, one of {', '.join(SELECTORS)}")
    prompt: str = setting("points", help=f"prompt per component, one of {', '.join(PROMPT_TYPES)}")
    instance_separation: bool = setting(True, help="one prompt per 8-connected component (step 2)")
    tau1: float = setting(0.3, help="coverage threshold of the selection rule (step 4)")
    tau2: float = setting(0.7, help="compatibility threshold of the selection rule (step 4)")
    theta2: float = setting(0.98, help="training: teacher confidence that extends the weak masks")
    min_component_area: int = setting(16, help="components smaller than this (pixels) are not prompted")
    scribble_points: int = setting(10, help="points spread along a scribble for step 1")
    overlap: str = setting("score", help=f"class overlaps, one of {', '.join(OVERLAP_RULES)}")
    exclude_conflicts: bool = setting(
        False,
        help="a candidate holding a pixel that the weak labels give another class is never chosen "
        "(steps 1 and 4; an addition to the paper: off = the paper's rule)",
    )
    negatives: int = setting(
        0,
        help="points and scribbles: up to this many of the nearest weak points of other classes join "
        "each point prompt as negative clicks, at most 16 (0 = the paper: positive points only)",
    )
    seed: int = setting(0, help="sampling seed")

    def validate(self, source: str = "sesam options") -> None:
        try:
            lookup(SAMPLERS, self.sampling, "sampling")
            lookup(SELECTORS, self.selection, "selection")
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        checks = [
            (self.prompt in PROMPT_TYPES, f"prompt {self.prompt!r} unknown; choose one of {PROMPT_TYPES}"),
            (
                self.overlap in OVERLAP_RULES,
                f"overlap {self.overlap!r} unknown; choose one of {OVERLAP_RULES}",
            ),
            (self.k >= 1, f"k must be >= 1, got {self.k}"),
            (0 <= self.negatives <= 16, f"negatives must lie in [0, 16], got {self.negatives}"),
            (
                0 <= self.tau1 <= 1 and 0 <= self.tau2 <= 1,
                f"tau1, tau2 must lie in [0, 1], got {self.tau1}, {self.tau2}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{source}: {message}")


def weak_fingerprint(weak: WeakLabels) -> str:
    """A content hash of weak labels (JSON kinds and the coarse mask)."""
    digest = hashlib.sha256(json.dumps(weak.to_json(), sort_keys=True).encode())
    if weak.coarse is not None:
        digest.update(weak.coarse.tobytes())
    return digest.hexdigest()


class SeSAMLabeler:
    """Weak labels of one image -> SeSAM labels, driven by any PromptableSegmenter."""

    name = "sesam"
    reads = frozenset({"points", "scribbles", "boxes", "coarse"})  # weak-label kinds it uses
    # kinds it decodes one prompt for per label (`sparse_prompts`, step 1; step 2 adds one per
    # component): a lower bound of its prompts that a server counts up front
    prompts_each = frozenset({"points", "scribbles", "boxes"})

    def __init__(
        self, engine: PromptableSegmenter, options: SeSAMOptions | None = None, initial_cache_size: int = 1024
    ) -> None:
        self.engine = engine
        self.options = options or SeSAMOptions()
        self.options.validate()
        # Step 1 depends only on the image and its weak labels, not on a teacher: during training
        # it is computed once per image and reused at every SAM refresh (bit-packed masks).
        self._initial_cache: OrderedDict[tuple[str, str], dict[int, np.ndarray]] = OrderedDict()
        self._initial_cache_size = initial_cache_size

    def _cached_initial_masks(
        self, handle: ImageHandle, weak: WeakLabels, result: RefineResult
    ) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """Step 1's class masks and the weak labels' own map (HxW, 255 = none), computed once per
        (image, weak labels) and reused: during training they never change between refreshes."""
        key = (handle.key, weak_fingerprint(weak))
        cached = self._initial_cache.get(key)
        if cached is not None:
            self._initial_cache.move_to_end(key)
            packed, weak_map = cached
            n = weak.height * weak.width
            masks = {
                c: np.unpackbits(bits, count=n).view(bool).reshape(weak.size) for c, bits in packed.items()
            }
            return masks, weak_map
        weak_map = weak.sparse_map()
        masks = self.initial_masks(handle, weak, result, weak_map)
        weak_map.setflags(write=False)  # shared between refreshes
        if self._initial_cache_size > 0:
            self._initial_cache[key] = ({c: np.packbits(m) for c, m in masks.items()}, weak_map)
            while len(self._initial_cache) > self._initial_cache_size:
                self._initial_cache.popitem(last=False)
        return masks, weak_map

    def initial_masks(
        self, handle: ImageHandle, weak: WeakLabels, result: RefineResult, weak_map: np.ndarray | None = None
    ) -> dict[int, np.ndarray]:
        """Step 1: class id -> coarse HxW mask, from coarse labels and SAM on points/scribbles/boxes.
        weak_map: `weak.sparse_map()`, computed here when not given."""
        masks: dict[int, np.ndarray] = {}
        weak_map = weak.sparse_map() if weak_map is None else weak_map

        def add(c: int, m: np.ndarray) -> None:
            masks[c] = masks[c] | m if c in masks else m.copy()

        if weak.coarse is not None:
            for c in np.unique(weak.coarse):
                if c != UNLABELED:
                    add(int(c), weak.coarse == c)
        prompts, origin = sparse_prompts(weak, self.options.scribble_points)
        anchors = self._anchors(weak)
        prompts = [self._with_negatives(p, o[2], anchors) for p, o in zip(prompts, origin, strict=True)]
        for start, out in predict_chunks(self.engine, handle, prompts, result):
            for i in range(len(out)):
                kind, j, c = origin[start + i]
                if kind == "box":  # candidates clipped to the box first: a leak outside it is cut anyway
                    clipped = np.stack([box_clip(m, weak.boxes[j].box) for m in out.masks[i]])
                    allowed = self._allowed(clipped, weak_map, c)
                    if allowed.any():  # else the box names no pixel of its own: it adds nothing
                        add(c, clipped[int(np.argmax(np.where(allowed, out.iou[i], -np.inf)))])
                else:
                    allowed = self._allowed(out.masks[i], weak_map, c)
                    if allowed.any():
                        kept = np.flatnonzero(allowed)
                        mask = out.masks[i, kept[select_smallest(out.masks[i, kept])]].copy()
                    else:  # every candidate leaks into another class's weak labels: the weak pixels alone
                        mask = np.zeros(weak.size, dtype=bool)
                    if kind == "scribble":
                        mask |= weak.scribble_mask(weak.scribbles[j])
                    else:
                        mask[int(weak.points[j].y), int(weak.points[j].x)] = True
                    add(c, mask)
        return masks

    def _anchors(self, weak: WeakLabels) -> tuple[np.ndarray, np.ndarray]:
        """The weak labels' points (Nx2 x, y) and their classes (N): every point, and the points
        spread along every scribble (none without `negatives`: nothing reads them)."""
        xy, cls = [], []
        if self.options.negatives <= 0:
            return np.empty((0, 2)), np.empty(0, dtype=int)
        for p in weak.points:
            xy.append([p.x, p.y])
            cls.append(p.class_id)
        for sc in weak.scribbles:
            pts = even_points_along(sc.points, self.options.scribble_points)
            xy.extend(pts.tolist())
            cls.extend([sc.class_id] * len(pts))
        return np.asarray(xy, dtype=float).reshape(-1, 2), np.asarray(cls, dtype=int)

    def _with_negatives(
        self, prompt: Prompt, class_id: int, anchors: tuple[np.ndarray, np.ndarray]
    ) -> Prompt:
        """A point prompt with up to `negatives` of the nearest other-class anchors added as negative
        clicks; any other prompt unchanged."""
        xy, cls = anchors
        n = self.options.negatives
        if n <= 0 or prompt.points is None or prompt.box is not None:
            return prompt
        others = xy[cls != class_id]
        if len(others) == 0:
            return prompt
        pos = np.asarray(prompt.points, dtype=float)
        dist = np.sqrt(((others[:, None, :] - pos[None, :, :]) ** 2).sum(-1)).min(1)
        near = others[np.argsort(dist, kind="stable")[:n]]
        return Prompt(
            points=np.concatenate([pos, near]),
            labels=np.concatenate([np.asarray(prompt.labels, dtype=int), np.zeros(len(near), dtype=int)]),
            mask_logits=prompt.mask_logits,
        )

    def _allowed(self, candidates: np.ndarray, weak_map: np.ndarray, class_id: int) -> np.ndarray:
        """C bool: the candidates (CxHxW bool) holding no pixel the weak labels give another class
        (all True with `exclude_conflicts` off)."""
        if not self.options.exclude_conflicts:
            return np.ones(len(candidates), dtype=bool)
        others = (weak_map != UNLABELED) & (weak_map != class_id)
        if not others.any():
            return np.ones(len(candidates), dtype=bool)
        ys, xs = np.nonzero(others)
        return ~candidates[:, ys, xs].any(axis=1)

    @staticmethod
    def extend(
        masks: dict[int, np.ndarray], extension: np.ndarray, weak_map: np.ndarray
    ) -> dict[int, np.ndarray]:
        """Refined mask sampling: add the unlabeled pixels a teacher labels confidently (HxW map,
        255 = not confident) to the class masks."""
        free = (weak_map == UNLABELED) & (extension != UNLABELED)
        out = {c: m.copy() for c, m in masks.items()}
        for c in np.unique(extension[free]):
            extra = free & (extension == c)
            out[int(c)] = out[int(c)] | extra if int(c) in out else extra
        return out

    def _prompt_for(
        self, component: np.ndarray, rng: np.random.Generator, confidence: np.ndarray | None
    ) -> Prompt:
        o = self.options
        if o.prompt == "box":
            rows, cols = np.flatnonzero(component.any(1)), np.flatnonzero(component.any(0))
            return Prompt(box=[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        if o.prompt == "mask":
            return Prompt(mask_logits=engine_mask_logits(self.engine, component))
        pts = lookup(SAMPLERS, o.sampling, "sampling")(component, o.k, rng, confidence)
        return Prompt(points=pts, labels=np.ones(len(pts), dtype=int))

    def refine(
        self,
        image: ImageHandle | np.ndarray,
        weak: WeakLabels,
        teacher_probs: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        extension: np.ndarray | None = None,
    ) -> RefineResult:
        """SeSAM labels for one image. Optional training inputs: teacher_probs (CxHxW) or directly
        `extension`, the teacher's confident labels (HxW, 255 = none; see `confident_labels`), which
        extend the weak masks before sampling; confidence: HxW map for the 'confidence' sampler
        (defaults to the teacher's max probability)."""
        o = self.options
        handle = ensure_handle(self.engine, image)
        if handle.original_size != weak.size:
            raise ValueError(
                f"weak labels are for {weak.width}x{weak.height}, the image is "
                f"{handle.original_size[1]}x{handle.original_size[0]}"
            )
        rng = np.random.default_rng(o.seed)
        result = RefineResult(labels=np.empty(0))
        masks, weak_map = self._cached_initial_masks(handle, weak, result)
        if teacher_probs is not None:
            extension = confident_labels(teacher_probs, o.theta2) if extension is None else extension
            if confidence is None:
                confidence = teacher_probs.max(0)
        if extension is not None:
            masks = self.extend(masks, extension, weak_map)

        components: list[tuple[int, np.ndarray]] = []
        for c, mask in sorted(masks.items()):
            parts = connected_components(mask, o.min_component_area) if o.instance_separation else [mask]
            components.extend((c, part) for part in parts if part.any())
        instances: list[Instance] = []
        anchors = self._anchors(weak)
        prompts = [
            self._with_negatives(self._prompt_for(part, rng, confidence), c, anchors)
            for c, part in components
        ]
        for start, out in predict_chunks(self.engine, handle, prompts, result):
            for i in range(len(out)):
                c, part = components[start + i]
                allowed = self._allowed(out.masks[i], weak_map, c)
                if not allowed.any():  # every candidate leaks into another class's weak labels
                    instances.append(Instance(c, part, 0.0))  # the lowest score: any chosen mask wins
                    result.instances.append(
                        {
                            "class_id": c,
                            "component_area": int(part.sum()),
                            "candidate": None,
                            "area": int(part.sum()),
                        }
                    )
                    continue
                kept = np.flatnonzero(allowed)
                cov, comp = coverage_compatibility(out.masks[i, kept], part)
                if o.selection == "coverage":
                    pick = choose_by_coverage(cov, comp, o.tau1, o.tau2)
                else:
                    pick = lookup(SELECTORS, o.selection, "selection")(
                        out.masks[i, kept], part, out.iou[i, kept], rng
                    )
                choice = int(kept[pick])
                instances.append(Instance(c, out.masks[i, choice].copy(), float(comp[pick])))
                result.instances.append(
                    {
                        "class_id": c,
                        "component_area": int(part.sum()),
                        "candidate": choice,
                        "coverage": round(float(cov[pick]), 4),
                        "compatibility": round(float(comp[pick]), 4),
                        "iou": round(float(out.iou[i, choice]), 4),
                        "area": int(out.masks[i, choice].sum()),
                    }
                )
        result.labels = merge_instances(weak.size, instances, weak_map, o.overlap)
        return result
