"""The click simulation of interactive segmentation benchmarks, and its metrics (pure numpy/scipy).

Protocol (as in the interactive-segmentation literature, e.g. RITM / SimpleClick): the first click
is positive at the interior-most pixel of the object; each next click goes to the interior-most
pixel of the largest error region of the current answer, positive on a missed region (false
negative), negative on a false alarm (false positive). "Interior-most" is the pixel farthest from
the region's boundary, the image border counting as boundary. Metrics: mean IoU after k clicks
(mIoU@k) and the number of clicks to reach an IoU (NoC@85 / NoC@90), the cap when never reached.
`next_click`, `clicks_to_reach` and `summarize` are pure; `click_session` runs the protocol for any
answering method, `simulate_clicks` for an engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from models.engine import ImageHandle, Prompt, PromptableSegmenter


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two HxW bool masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of `region` farthest from its boundary (the image border included)."""
    distance = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The next simulated click for `prediction` (HxW bool) against `truth`: inside the largest
    8-connected error region; None when there is no error left."""
    errors = []
    for positive, region in ((True, truth & ~prediction), (False, prediction & ~truth)):
        labelled, count = ndi.label(region, structure=np.ones((3, 3), bool))
        if count:
            areas = np.bincount(labelled.ravel())[1:]
            k = int(np.argmax(areas))
            errors.append((int(areas[k]), positive, labelled == k + 1))
    if not errors:
        return None
    _, positive, region = max(errors, key=lambda e: e[0])
    x, y = interior_point(region)
    return Click(x, y, positive)


def clicks_to_reach(ious: list[float], threshold: float, cap: int) -> int:
    """NoC: the 1-based number of clicks after which IoU >= threshold first holds; `cap` if never.
    `ious[k]` is the IoU after k + 1 clicks."""
    for k, value in enumerate(ious[:cap]):
        if value >= threshold:
            return k + 1
    return cap


def summarize(per_object: list[list[float]], at: tuple[int, ...] = (1, 3, 5, 10, 20), cap: int = 20) -> dict:
    """mIoU@k for k in `at` and NoC@85 / NoC@90 over objects (each a list of IoUs after 1, 2, ...
    clicks; a list that stopped early, at IoU 1, keeps its last value)."""
    padded = np.array([(ious + [ious[-1]] * cap)[:cap] for ious in per_object])
    out = {f"miou@{k}": float(padded[:, k - 1].mean()) for k in at if k <= cap}
    for threshold in (0.85, 0.90):
        out[f"noc@{round(threshold * 100)}"] = float(
            np.mean([clicks_to_reach(list(r), threshold, cap) for r in padded])
        )
    out["objects"] = len(per_object)
    return out


@dataclass
class ClickRun:
    """One object's simulated session: IoU after each click, whether the engine's best-scored
    candidate was truly the best of its candidates (None where it answered one mask), seconds per
    predict call, the clicks, and (with `keep_answers`) the answer after each click."""

    ious: list[float] = field(default_factory=list)
    picked_best: list[bool | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    answers: list[np.ndarray] = field(default_factory=list)


# clicks so far -> (the answer, whether it is truly the best of the method's candidates, or None)
Answer = Callable[[list[Click]], tuple[np.ndarray, bool | None]]


def click_session(
    truth: np.ndarray, answer: Answer, max_clicks: int = 20, keep_answers: bool = False
) -> ClickRun:
    """Up to `max_clicks` simulated clicks on one object, each answered by `answer` (timed); stops
    early at a perfect answer."""
    prediction = np.zeros(truth.shape, bool)
    run = ClickRun()
    for _ in range(max_clicks):
        click = next_click(prediction, truth)
        if click is None:
            break
        run.clicks.append(click)
        start = time.perf_counter()
        prediction, picked_best = answer(list(run.clicks))
        run.seconds.append(time.perf_counter() - start)
        run.ious.append(mask_iou(prediction, truth))
        run.picked_best.append(picked_best)
        if keep_answers:
            run.answers.append(prediction)
    return run


def simulate_clicks(
    engine: PromptableSegmenter,
    image: np.ndarray | ImageHandle,
    truth: np.ndarray,
    max_clicks: int = 20,
    feed_logits: bool = True,
    multimask: str = "first",
    keep_answers: bool = False,
) -> ClickRun:
    """`click_session` answered by an engine for all clicks so far; with `feed_logits` the answer's
    low-res logits go back as the next prompt's mask input (SAM's next-click protocol).

    multimask: "first" (SAM's own practice: three candidates for the ambiguous first click, the
    best-scored one kept, then the single-mask output once several clicks disambiguate) or "always"
    (the best-scored of three candidates at every click). `picked_best` is recorded where the engine
    chose among candidates."""
    if multimask not in ("first", "always"):
        raise ValueError(f"multimask: choose first or always, got {multimask!r}")
    handle = image if isinstance(image, ImageHandle) else engine.embed([image])[0]
    logits = None

    def answer(clicks: list[Click]) -> tuple[np.ndarray, bool | None]:
        nonlocal logits
        prompt = Prompt(
            points=np.array([[c.x + 0.5, c.y + 0.5] for c in clicks]),
            labels=np.array([int(c.positive) for c in clicks]),
            mask_logits=logits if feed_logits else None,
        )
        several = multimask == "always" or len(clicks) == 1
        out = engine.predict(handle, [prompt], multimask=several)
        best = int(np.argmax(out.iou[0]))
        logits = out.low_res_logits[0, best : best + 1]
        if not several:
            return out.masks[0, 0], None
        truths = [mask_iou(m, truth) for m in out.masks[0]]
        return out.masks[0, best], truths[best] >= max(truths)

    return click_session(truth, answer, max_clicks, keep_answers)
