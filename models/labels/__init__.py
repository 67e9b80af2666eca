"""Refinement labelers: weak labels + a promptable segmenter -> dense pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.config import from_mapping, lookup
from models.engine import PromptableSegmenter
from models.labels.common import RefineResult, check_weak_kinds, confident_labels
from models.labels.grounded import GroundedLabeler, GroundedOptions
from models.labels.naive import NaiveLabeler, NaiveOptions
from models.labels.sepl import SEPLLabeler, SEPLOptions
from models.labels.sesam import SeSAMLabeler, SeSAMOptions
from models.labels.weaksam.labeler import WeakSAMLabeler, WeakSAMOptions


@dataclass(frozen=True)
class LabelerBuilder:
    """The builder of one refinement method: `(engine, **options)` -> the labeler, its options read
    and checked as `<name> options`; `options` is the dataclass the service checks requests against."""

    name: str
    labeler: type
    options: type

    def __call__(self, engine: PromptableSegmenter, **values: Any) -> Any:
        return self.labeler(engine, from_mapping(self.options, values, f"{self.name} options"))


# refinement method -> its builder (the registry shape of models.config)
LABELERS: dict[str, LabelerBuilder] = {
    "sesam": LabelerBuilder("sesam", SeSAMLabeler, SeSAMOptions),
    "naive": LabelerBuilder("naive", NaiveLabeler, NaiveOptions),
    "sepl": LabelerBuilder("sepl", SEPLLabeler, SEPLOptions),
    "weaksam": LabelerBuilder("weaksam", WeakSAMLabeler, WeakSAMOptions),
    "grounded": LabelerBuilder("grounded", GroundedLabeler, GroundedOptions),
}


def backend_defaults(method: str, backend: str, options: dict) -> dict:
    """Options adjusted to the engine: with the classical prior SEPL keeps every automatic mask.

    The prior's scores are not SAM's calibrated IoU, so SAM's automatic-mask thresholds would drop
    them all. Values the user set are kept.
    """
    options = dict(options)
    if method == "sepl" and backend.startswith("classical"):
        options.setdefault("pred_iou_thresh", 0.0)
        options.setdefault("stability_thresh", 0.0)
    return options


def build_labeler(method: str, engine: PromptableSegmenter, **options: object):
    """A labeler by name ('sesam', 'naive', 'sepl', 'weaksam', 'grounded') with its options."""
    builder = lookup(LABELERS, method, "refinement method")
    try:
        return builder(engine, **options)
    except TypeError as exc:
        raise ValueError(f"{method}: {exc}") from exc


__all__ = [
    "LABELERS",
    "GroundedLabeler",
    "GroundedOptions",
    "LabelerBuilder",
    "NaiveLabeler",
    "NaiveOptions",
    "RefineResult",
    "SEPLLabeler",
    "SEPLOptions",
    "SeSAMLabeler",
    "SeSAMOptions",
    "WeakSAMLabeler",
    "WeakSAMOptions",
    "backend_defaults",
    "build_labeler",
    "check_weak_kinds",
    "confident_labels",
]
