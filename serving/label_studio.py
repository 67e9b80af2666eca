"""A Label Studio ML backend, served by the same process and models as the service under `/ls`.

In Label Studio: Settings -> Model -> Connect Model, URL `http://<host>:<port>/ls` (interactive
preannotations on). When the service has an API key, turn on basic auth there with the key as the
password (any user name). The protocol (Label Studio 1.2x):

- `GET /ls/health` -> `{"status": "UP", ...}` at once (no model work).
- `POST /ls/setup` `{project, schema, hostname, access_token, ...}` -> `{"model_version"}`. It only
  records where the project's images live and the token to fetch them with; no model loads here.
- `POST /ls/predict` `{tasks, project, label_config, params: {context}}` ->
  `{"results": [{"result": [...], "score", "model_version"}, ...]}`, one per task:
  - interactive (a context with regions): the task's KeyPointLabels clicks (positive or negative,
    `is_positive`) and its last RectangleLabels box become one prompt; the best of SAM's three
    masks is answered as a BrushLabels mask (Label Studio's brush RLE) on the brush label named as
    the clicked label (else the first brush label). It is exactly `/predict`'s best mask for the
    same prompt; clicks on the same task reuse the cached embedding.
  - batch ("Retrieve predictions", no context): the served student's answer (semantic: one brush
    per class whose name is a brush label, case-insensitive; instance: one per instance with its
    score), or, with no student, the task's last annotation (keypoints, rectangles, brush,
    polygons) refined by SeSAM into one brush per class.
- `POST /ls/webhook` -> acknowledges Label Studio's events (training runs with `sesam train`).

Task images come from Label Studio itself (`/data/upload/...`, `/data/local-files/?d=...`, or an
absolute URL on Label Studio's host) with the project's token, from `data:` URIs, or from local files
under `label_studio_files` for local-files storage. Nothing else is fetched: a URL on another host
is a 400 that names the task's field. Every download is bounded by `max_body_bytes` and the light
timeout.
"""

from __future__ import annotations

import base64
import io
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import bentoml
import httpx
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.io import UNLABELED, decode_rle
from models.labels.brush import brush_result
from models.labels.formats import label_studio_regions
from serving.codec import decode_labels
from serving.errors import ApiError, error_body

PROJECTS = 256  # projects whose /setup is remembered
IMAGE_KEYS = 1024  # task image URLs remembered -> embedding keys (a click skips the download)
FETCH_TIMEOUT_S = 20.0


@dataclass
class LabelConfig:
    """What the backend needs from a project's labeling config."""

    image: str  # the Image tag's name (to_name)
    image_value: str  # the task data key it shows ($image -> "image")
    brush: str | None  # the BrushLabels tag's name (from_name), if any
    brush_labels: list[str] = field(default_factory=list)

    def brush_label(self, name: str | None) -> str | None:
        """The brush label named `name` (case-insensitive), else None."""
        if name is None:
            return None
        by_lower = {b.lower(): b for b in self.brush_labels}
        return by_lower.get(name.lower())


def parse_label_config(xml: str, where: str = "label_config") -> LabelConfig:
    """A Label Studio labeling config -> its Image and BrushLabels tags (400 when unusable)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ApiError(400, f"{where}: not XML ({exc})", where) from None
    images = [e for e in root.iter() if e.tag == "Image" and e.get("name")]
    if not images:
        raise ApiError(400, f"{where}: no <Image> tag to segment", where)
    image = images[0]
    brushes = [e for e in root.iter() if e.tag == "BrushLabels" and e.get("toName") == image.get("name")]
    brush = brushes[0] if brushes else None
    return LabelConfig(
        image=image.get("name", "image"),
        image_value=image.get("value", "$image").lstrip("$"),
        brush=brush.get("name") if brush is not None else None,
        brush_labels=[e.get("value", "") for e in brush.iter("Label")] if brush is not None else [],
    )


@dataclass
class Project:
    hostname: str | None = None
    token: str | None = None


class LabelStudioBackend:
    """The backend's state (projects' hosts and tokens, image URL -> embedding key) and its work,
    done through the service instance (`service`: a `SegmentationService`)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.config = service.config
        self.projects: OrderedDict[str, Project] = OrderedDict()
        self.image_keys: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    # -- versions and projects ------------------------------------------------------------------
    def model_version(self) -> str:
        student = self.config.student_checkpoint
        return f"sesam-{self.service.engine.name}" + (f"+{Path(student).stem}" if student else "")

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        project = str(body.get("project") or "").split(".")[0]
        with self.lock:
            self.projects[project] = Project(body.get("hostname") or None, body.get("access_token") or None)
            self.projects.move_to_end(project)
            while len(self.projects) > PROJECTS:
                self.projects.popitem(last=False)
        return {"model_version": self.model_version()}

    def project(self, body: dict[str, Any]) -> Project:
        with self.lock:
            return self.projects.get(str(body.get("project") or "").split(".")[0], Project())

    # -- images ---------------------------------------------------------------------------------
    async def image_bytes(self, url: str, project: Project, where: str) -> bytes:
        """The bytes of a task's image (see the module doc for what may be read)."""
        limit = self.config.max_body_bytes
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            if ";base64" not in head:
                raise ApiError(400, f"{where}: a data: URI must be base64", where)
            raw = base64.b64decode(data, validate=False)
            if len(raw) > limit:
                raise ApiError(413, f"{where}: image of {len(raw)} bytes exceeds {limit}", where)
            return raw
        parts = urlsplit(url)
        root = self.config.label_studio_files
        if parts.path == "/data/local-files/" and root:
            relative = unquote(parse_qs(parts.query).get("d", [""])[0])
            base = Path(root).resolve()
            path = (base / relative).resolve()
            if not path.is_relative_to(base) or not path.is_file():
                raise ApiError(404, f"{where}: {relative!r} is not a file under label_studio_files", where)
            if path.stat().st_size > limit:
                raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
            return path.read_bytes()
        host = (self.config.label_studio_url or project.hostname or "").rstrip("/")
        if not host:
            raise ApiError(
                400,
                f"{where}: {url[:200]!r} needs Label Studio's address: none came with /setup and "
                "label_studio_url is not set",
                where,
            )
        if parts.scheme:  # an absolute URL: only on Label Studio's own host
            if (parts.scheme, parts.netloc) != tuple(urlsplit(host)[:2]):
                raise ApiError(
                    400,
                    f"{where}: {url[:200]!r} is not on Label Studio's host {host}; the backend reads task "
                    "images from Label Studio, data: URIs or label_studio_files only",
                    where,
                )
            full = url
        else:
            full = host + "/" + url.lstrip("/")
        token = self.config.label_studio_token or project.token
        headers = {"Authorization": f"Token {token}"} if token else {}
        try:
            async with (
                httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
                client.stream("GET", full, headers=headers) as answer,
            ):
                if answer.status_code != 200:
                    raise ApiError(
                        400,
                        f"{where}: Label Studio answered {answer.status_code} for {url[:200]!r}"
                        + (
                            " (check the project's token / label_studio_token)"
                            if answer.status_code in (401, 403)
                            else ""
                        ),
                        where,
                    )
                chunks, size = [], 0
                async for chunk in answer.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ApiError(
                400, f"{where}: cannot read {url[:200]!r} from {host} ({type(exc).__name__})", where
            ) from None

    def task_image_url(self, task: dict[str, Any], config: LabelConfig, where: str) -> str:
        data = task.get("data") or {}
        url = data.get(config.image_value)
        if not isinstance(url, str) or not url:
            raise ApiError(400, f"{where}.data.{config.image_value}: the task has no image URL", where)
        return url

    async def handle(self, url: str, project: Project, where: str) -> Any:
        """The task image's embedding: cached by URL, else downloaded and embedded (heavy lane)."""
        with self.lock:
            key = self.image_keys.get(url)
        if key is not None:
            handle = self.service.engine.lookup(key)
            if handle is not None:
                return handle
        data = await self.image_bytes(url, project, f"{where}.data")
        handle, _ = await self.service._handle_for_upload(data, f"{where}.data")
        with self.lock:
            self.image_keys[url] = handle.key
            while len(self.image_keys) > IMAGE_KEYS:
                self.image_keys.popitem(last=False)
        return handle

    # -- interactive -----------------------------------------------------------------------------
    async def interactive(
        self, task: dict[str, Any], regions: list[dict], config: LabelConfig, project: Project
    ) -> dict[str, Any]:
        """Keypoints (positive / negative) and the last rectangle of `regions` -> one brush mask."""
        if config.brush is None:
            raise ApiError(
                400, "label_config: interactive masks need a <BrushLabels> on the image", "label_config"
            )
        handle = await self.handle(self.task_image_url(task, config, "tasks[0]"), project, "tasks[0]")
        h, w = handle.original_size
        points, labels, box, clicked = [], [], None, None
        for i, region in enumerate(regions):
            kind, value = region.get("type"), region.get("value") or {}
            try:
                if kind == "keypointlabels":
                    points.append([float(value["x"]) * w / 100.0, float(value["y"]) * h / 100.0])
                    labels.append(1 if region.get("is_positive", True) else 0)
                elif kind == "rectanglelabels":
                    x, y = float(value["x"]) * w / 100.0, float(value["y"]) * h / 100.0
                    box = [
                        x,
                        y,
                        x + float(value["width"]) * w / 100.0,
                        y + float(value["height"]) * h / 100.0,
                    ]
                else:
                    continue
            except (KeyError, TypeError, ValueError):
                where = f"params.context.result[{i}].value"
                raise ApiError(
                    400, f"{where}: a {kind} needs numeric x, y (and width, height)", where
                ) from None
            clicked = (value.get(kind) or [clicked])[0]
        if not points and box is None:
            raise ApiError(
                400,
                "params.context.result: no keypointlabels or rectanglelabels region",
                "params.context.result",
            )
        try:
            prompt = self.service.prompt_model(points=points or None, labels=labels or None, box=box)
        except ValueError as exc:  # pydantic's ValidationError: over a limit, outside the image
            raise ApiError(400, f"params.context.result: {exc}", "params.context.result") from None
        try:
            converted = self.service._prompts([prompt], handle)
        except ApiError as exc:  # named for /predict's body: name the regions instead
            message = exc.message.replace("prompts[0]", "params.context.result")
            raise ApiError(exc.error_code.value, message, "params.context.result") from None
        (answer,) = await self.service.predict_lane.run(
            self.service._decode, handle, converted, True, "rle", budget_s=self.config.light_timeout_s
        )
        best = answer["best"]
        mask = decode_rle(answer["masks"][best])
        label = config.brush_label(clicked) or (config.brush_labels[0] if config.brush_labels else clicked)
        result = brush_result(mask, str(label), config.brush, config.image, answer["iou"][best])
        return {"result": [result], "score": answer["iou"][best], "model_version": self.model_version()}

    # -- batch -----------------------------------------------------------------------------------
    async def batch(self, tasks: list[dict], config: LabelConfig, project: Project) -> list[dict[str, Any]]:
        if config.brush is None:
            raise ApiError(
                400, "label_config: predictions are brush masks and need a <BrushLabels>", "label_config"
            )
        if len(tasks) > self.config.max_images:
            raise ApiError(
                400, f"tasks: {len(tasks)} tasks exceed the limit of {self.config.max_images}", "tasks"
            )
        version = self.model_version()
        out = []
        for i, task in enumerate(tasks):
            where = f"tasks[{i}]"
            data = await self.image_bytes(self.task_image_url(task, config, where), project, f"{where}.data")
            if self.config.student_checkpoint:
                result, score = await self.from_student(data, config)
            else:
                result, score = await self.from_annotations(data, task, config, where)
            out.append({"result": result, "score": score, "model_version": version})
        return out

    async def from_student(self, data: bytes, config: LabelConfig) -> tuple[list[dict], float]:
        meta, _, answers = await self.service._student_answers([data], 0.5)
        names, answer, result = meta["class_names"] or [], answers[0], []
        if meta["task"] == "semantic":
            labels = np.asarray(answer, np.uint8)
            for c in (int(c) for c in np.unique(labels) if c != UNLABELED):
                label = config.brush_label(names[c] if c < len(names) else None)
                if label is not None:
                    result.append(brush_result(labels == c, label, config.brush, config.image))
            return result, 1.0 if result else 0.0
        scores = []
        for item in answer:
            label = config.brush_label(item.get("class_name")) or config.brush_labels[0]
            result.append(
                brush_result(decode_rle(item["mask"]), label, config.brush, config.image, item["score"])
            )
            scores.append(float(item["score"]))
        return result, round(float(np.mean(scores)), 6) if scores else 0.0

    async def from_annotations(
        self, data: bytes, task: dict[str, Any], config: LabelConfig, where: str
    ) -> tuple[list[dict], float]:
        """The task's last annotation refined by SeSAM: one brush per class (brush label order)."""
        annotations = task.get("annotations") or []
        regions = (annotations[-1].get("result") or []) if annotations else []
        names = config.brush_labels
        ids = {n: i for i, n in enumerate(names)}
        regions = [r for r in regions if (r.get("value") or {}).get(r.get("type"), [None])[0] in ids]
        try:
            weak = label_studio_regions(regions, ids, f"{where}.annotations")
        except (KeyError, TypeError, ValueError) as exc:
            raise ApiError(400, str(exc), f"{where}.annotations") from None
        if weak is None:
            return [], 0.0
        coarse = None
        if weak.coarse is not None:
            buffer = io.BytesIO()
            Image.fromarray(weak.coarse).save(buffer, format="PNG")
            coarse, weak.coarse = buffer.getvalue(), None
        body = {k: v for k, v in weak.to_json().items() if k not in ("version", "width", "height", "coarse")}
        options = self.service.refine_options("sesam")
        out = await self.service._refine_bytes(data, body, coarse, "sesam", options, "png", len(names))
        labels = decode_labels(out["labels"])
        result = [
            brush_result(labels == c, names[c], config.brush, config.image)
            for c in (int(c) for c in np.unique(labels) if c != UNLABELED and c < len(names))
        ]
        return result, 1.0 if result else 0.0


def _backend(request: Request) -> LabelStudioBackend:
    service = bentoml.get_current_service()
    backend = getattr(service, "label_studio", None)
    if backend is None:
        backend = service.label_studio = LabelStudioBackend(service)
    return backend


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "body: not JSON", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: a JSON object is required", "body")
    return body


async def health(request: Request) -> JSONResponse:
    backend = _backend(request)
    return JSONResponse({"status": "UP", "model_class": "sesam", "model_version": backend.model_version()})


async def setup(request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).setup(await _json(request)))


async def predict(request: Request) -> JSONResponse:
    backend, body = _backend(request), await _json(request)
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise ApiError(400, "tasks: a non-empty list of task objects is required", "tasks")
    xml = body.get("label_config")
    if not isinstance(xml, str):
        raise ApiError(400, "label_config: the project's labeling config (XML) is required", "label_config")
    config = parse_label_config(xml)
    project = backend.project(body)
    context = (body.get("params") or {}).get("context") or {}
    regions = context.get("result") if isinstance(context, dict) else None
    if regions:
        if not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
            raise ApiError(
                400, "params.context.result: a list of regions is required", "params.context.result"
            )
        results = [await backend.interactive(tasks[0], regions, config, project)]
    else:
        results = await backend.batch(tasks, config, project)
    return JSONResponse({"results": results})


async def webhook(request: Request) -> JSONResponse:
    body = await _json(request)
    action = str(body.get("action", ""))
    note = "training runs with `sesam train`, not from Label Studio" if action == "START_TRAINING" else ""
    return JSONResponse({"status": "ok", "action": action} | ({"note": note} if note else {}))


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.error_code.value, exc.message, exc.field), exc.error_code.value)


def label_studio_app() -> Starlette:
    """The backend's routes, to mount at `/ls`."""
    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/", health, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/webhook", webhook, methods=["POST"]),
        ],
        exception_handlers={ApiError: api_error},
    )
