"""Batch jobs through a running service: `sesam refine --endpoint URL ...` and
`sesam segment --endpoint URL ...`.

The folder loop is `models.jobs.refine.process_folder`, the one in-process `sesam refine` uses, so
the output folder is laid out the same way (`<stem>.png`, `.meta/<stem>.json`, `summary.json`,
optional overlays and report), runs resume the same way, and the label maps are identical for
images up to the server's `refine_side` (larger ones it refines at that side and scales the map
back): the server runs the same labeler and returns a lossless PNG. Requests run with bounded concurrency; the
client retries connection errors and 5xx with backoff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.jobs.refine import RefineRun, process_folder
from models.jobs.segment import SegmentRun, segment_folder
from models.labels.schema import WeakLabels
from serving.client import ServiceError, SesamClient
from serving.codec import decode_labels


def _check(client: SesamClient) -> None:
    """Before any image: one line, why the endpoint cannot serve the batch (a ValueError: exit 2)."""
    try:
        client.check()
    except ValueError as exc:
        raise ValueError(f"--endpoint {exc}") from None


def _field(answer: dict[str, Any], key: str, route: str) -> Any:
    if key not in answer:
        raise ServiceError(None, f"{route} answered without {key!r}: not a sesam service?")
    return answer[key]


def refine_folder_remote(
    run: RefineRun, client: SesamClient, concurrency: int = 4, quiet: bool = False
) -> dict[str, Any]:
    """Refine every image with weak labels through the service; returns (and writes) the summary."""
    _check(client)

    def refine_one(image: np.ndarray, weak: WeakLabels, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        answer = client.refine(
            path.read_bytes(), weak, method=run.method, options=run.options, num_classes=run.num_classes
        )
        labels = decode_labels(_field(answer, "labels", "/refine"))
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"{path}: the server answered a {labels.shape} map for a {image.shape[:2]} image"
            )
        return labels, answer["stats"] | {"endpoint": client.url}

    return process_folder(
        run,
        lambda: refine_one,
        f"endpoint {client.url}",
        quiet=quiet,
        concurrency=concurrency,
        errors=(ValueError, ServiceError),
    )


def segment_folder_remote(
    run: SegmentRun, client: SesamClient, concurrency: int = 4, quiet: bool = False
) -> dict[str, Any]:
    """Segment every image through the service's /segment; the same layout as in-process runs."""
    _check(client)

    def segment_one(image: np.ndarray, path: Path) -> tuple[str, Any, list[str]]:
        answer = client.segment(path.read_bytes(), min_score=run.min_score)
        result = _field(answer, "results", "/segment")[0]
        if (result["height"], result["width"]) != image.shape[:2]:
            raise ValueError(f"{path}: the server answered for a {result['width']}x{result['height']} image")
        names = list(answer.get("class_names") or [])
        if answer["task"] == "semantic":
            return "semantic", decode_labels(result["labels"]), names
        return "instance", result["instances"], names

    return segment_folder(
        run,
        lambda: segment_one,
        f"endpoint {client.url}",
        quiet=quiet,
        concurrency=concurrency,
        errors=(ValueError, ServiceError),
    )
