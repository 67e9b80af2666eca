"""Weak labels: the schema users hand us (points, scribbles, coarse masks, boxes, tags)."""

from models.weak.schema import (
    SCHEMA_VERSION,
    UNLABELED,
    BoxLabel,
    PointLabel,
    Scribble,
    WeakLabels,
    atomic_write,
    load_weak_labels,
    read_label_png,
    save_json,
    save_png,
    save_weak_labels,
)

__all__ = [
    "SCHEMA_VERSION",
    "UNLABELED",
    "BoxLabel",
    "PointLabel",
    "Scribble",
    "WeakLabels",
    "atomic_write",
    "load_weak_labels",
    "read_label_png",
    "save_json",
    "save_png",
    "save_weak_labels",
]
