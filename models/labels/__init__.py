"""Refinement labelers: weak labels + a promptable segmenter -> dense pseudo-labels."""

from __future__ import annotations

from collections.abc import Callable

from models.config import from_mapping
from models.engine import PromptableSegmenter
from models.labels.common import RefineResult, check_weak_kinds, confident_labels
from models.labels.grounded import GroundedLabeler, GroundedOptions
from models.labels.naive import NaiveLabeler, NaiveOptions
from models.labels.sepl import SEPLLabeler, SEPLOptions
from models.labels.sesam import SeSAMLabeler, SeSAMOptions
from models.labels.weaksam.labeler import WeakSAMLabeler, WeakSAMOptions

LABELERS: dict[str, Callable[..., object]] = {
    "sesam": lambda engine, **kw: SeSAMLabeler(engine, from_mapping(SeSAMOptions, kw, "sesam options")),
    "naive": lambda engine, **kw: NaiveLabeler(engine, from_mapping(NaiveOptions, kw, "naive options")),
    "sepl": lambda engine, **kw: SEPLLabeler(engine, from_mapping(SEPLOptions, kw, "sepl options")),
    "weaksam": lambda engine, **kw: WeakSAMLabeler(
        engine, from_mapping(WeakSAMOptions, kw, "weaksam options")
    ),
    "grounded": lambda engine, **kw: GroundedLabeler(
        engine, from_mapping(GroundedOptions, kw, "grounded options")
    ),
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
    if method not in LABELERS:
        raise ValueError(f"unknown refinement method {method!r}; choose one of {sorted(LABELERS)}")
    try:
        return LABELERS[method](engine, **options)
    except TypeError as exc:
        raise ValueError(f"{method}: {exc}") from exc


__all__ = [
    "LABELERS",
    "GroundedLabeler",
    "GroundedOptions",
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
