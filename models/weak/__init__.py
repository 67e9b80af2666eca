"""Weak labels: the schema users hand us (points, scribbles, coarse masks, boxes, tags)."""

from models.weak.schema import (
    SCHEMA_VERSION,
    BoxLabel,
    PointLabel,
    Scribble,
    WeakLabels,
    load_weak_labels,
    save_weak_labels,
)

__all__ = [
    "SCHEMA_VERSION",
    "BoxLabel",
    "PointLabel",
    "Scribble",
    "WeakLabels",
    "load_weak_labels",
    "save_weak_labels",
]
