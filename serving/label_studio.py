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

Task images come from Label Studio itself (relative paths under `LABEL_STUDIO_PATHS`, or such
URLs on its host; the host is `label_studio_url` when set, else what /ls/setup said) with the
project's token, from `data:` URIs, or from local files under `label_studio_files` for local-files
storage. Nothing else is fetched: another path or host is a 400 that names the task's field. A
download is bounded by `max_body_bytes` and FETCH_TIMEOUT_S in all; a batch by
`request_timeout_s`; CPU work (decoding, RLE, PNG) runs in the service's lanes, off the event loop.
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
from urllib.parse import parse_qs, urlsplit

import anyio
import bentoml
import httpx
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.engine.validation import ImageTooLarge, read_image_size
from models.io import UNLABELED, decode_rle
from models.labels.brush import brush_result
from models.labels.formats import LABEL_STUDIO_KINDS, label_studio_regions, ls_geometry, ls_label
from serving.codec import decode_labels
from serving.errors import ApiError, error_body

PROJECTS = 256  # projects whose /setup is remembered
IMAGE_KEYS = 1024  # task image URLs remembered -> embedding keys (a click skips the download)
FETCH_TIMEOUT_S = 20.0  # one image download, all of it
MAX_TASKS = 1000  # tasks in one /ls/predict (each also within the request's deadline)
# the only paths read from Label Studio: uploads, local-files storage, cloud storage resolved by Label Studio
LABEL_STUDIO_PATHS = ("/data/upload/", "/data/local-files/", "/tasks/")


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
    if brush is not None and not any(e.get("value") for e in brush.iter("Label")):
        raise ApiError(
            400, f"{where}: <BrushLabels name={brush.get('name')!r}> has no <Label value=...>", where
        )
    return LabelConfig(
        image=image.get("name", "image"),
        image_value=image.get("value", "$image").lstrip("$"),
        brush=brush.get("name") if brush is not None else None,
        brush_labels=[e.get("value", "") for e in brush.iter("Label") if e.get("value")]
        if brush is not None
        else [],
    )


@dataclass
class Project:
    """Where a project's images live and the token to read them with, as /ls/setup said."""

    hostname: str | None = None
    token: str | None = None


@dataclass
class Click:
    """An interactive request's regions, read before any work: points in percent (x, y), their
    labels, the last rectangle's region, and the label clicked last."""

    regions: list[dict]
    label: str | None


def read_context(regions: list[Any], max_points: int) -> Click:
    """The keypoint and rectangle regions of an interactive context, checked (400 naming the region)."""
    kept, label = [], None
    for i, region in enumerate(regions):
        where = f"params.context.result[{i}]"
        if not isinstance(region, dict):
            raise ApiError(400, f"{where}: a region object is required", where)
        if region.get("type") not in ("keypointlabels", "rectanglelabels"):
            continue
        try:
            label = ls_label(region, where)
            ls_geometry(region, 100, 100, where)  # numbers and finite, before any image is read
        except ValueError as exc:
            raise ApiError(400, str(exc), f"{where}.value") from None
        kept.append(region)
    points = sum(r["type"] == "keypointlabels" for r in kept)
    if not kept:
        raise ApiError(
            400, "params.context.result: no keypointlabels or rectanglelabels region", "params.context.result"
        )
    if points > max_points:
        raise ApiError(
            400,
            f"params.context.result: {points} keypoints exceed the limit of {max_points}",
            "params.context.result",
        )
    return Click(kept, label)


class LabelStudioBackend:
    """The backend's state (projects' hosts and tokens, image URL -> embedding key) and its work,
    done through the service instance (`service`: a `SegmentationService`, whose public helpers
    `handle_for_upload`, `to_prompts`, `decode_prompts`, `student_answers_for`, `refine_bytes` and
    lanes it uses)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.config = service.config
        self.projects: OrderedDict[str, Project] = OrderedDict()
        self.image_keys: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    # -- versions and projects ------------------------------------------------------------------
    def model_version(self) -> str:
        """`sesam-<engine>` and `+<student>` when one is served."""
        student = self.config.student_checkpoint
        return f"sesam-{self.service.engine.name}" + (f"+{Path(student).stem}" if student else "")

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        """Remember the project's host and token (no model work: Label Studio calls this often)."""
        hostname, token = body.get("hostname"), body.get("access_token")
        if hostname is not None and not (
            isinstance(hostname, str) and hostname.startswith(("http://", "https://"))
        ):
            raise ApiError(400, "hostname: Label Studio's http(s) address is required", "hostname")
        if token is not None and not isinstance(token, str):
            raise ApiError(400, "access_token: a string is required", "access_token")
        project = project_id(body)
        with self.lock:
            self.projects[project] = Project(hostname or None, token or None)
            self.projects.move_to_end(project)
            while len(self.projects) > PROJECTS:
                self.projects.popitem(last=False)
        return {"model_version": self.model_version()}

    def project(self, body: dict[str, Any]) -> Project:
        with self.lock:
            return self.projects.get(project_id(body), Project())

    # -- images ---------------------------------------------------------------------------------
    def source(self, url: str, project: Project, where: str) -> tuple[str, str | None]:
        """(what to read, the token to send): a full URL on Label Studio's host, or `file:<path>`
        under label_studio_files. Anything else is a 4xx naming `where`."""
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ApiError(400, f"{where}: not a URL", where) from None
        root = self.config.label_studio_files
        if parts.path == "/data/local-files/" and root and not parts.scheme:
            relative = parse_qs(parts.query).get("d", [""])[0]
            try:
                base = Path(root).resolve()
                path = (base / relative).resolve()
                inside = path.is_relative_to(base) and path.is_file()
            except (ValueError, OSError):
                inside = False
            if not inside:
                raise ApiError(
                    404, f"{where}: {relative[:200]!r} is not a file under label_studio_files", where
                )
            return f"file:{path}", None
        if not parts.path.startswith(LABEL_STUDIO_PATHS):
            raise ApiError(
                400,
                f"{where}: only Label Studio's own image paths ({', '.join(LABEL_STUDIO_PATHS)}), data: URIs "
                "or label_studio_files are read",
                where,
            )
        if self.config.label_studio_url:  # the configured address wins, with its token
            host, token = self.config.label_studio_url, self.config.label_studio_token or project.token
        else:
            host, token = project.hostname, project.token
        if not host:
            raise ApiError(
                400,
                f"{where}: Label Studio's address is unknown: none came with /ls/setup and label_studio_url is not set",
                where,
            )
        host_parts = urlsplit(host)
        if parts.scheme or parts.netloc:  # an absolute URL: only on Label Studio's own host
            if (parts.scheme.lower(), parts.netloc.lower()) != (
                host_parts.scheme.lower(),
                host_parts.netloc.lower(),
            ):
                raise ApiError(400, f"{where}: the URL is not on Label Studio's host {host}", where)
            return url, token
        return host.rstrip("/") + "/" + url.lstrip("/"), token

    async def image_bytes(self, url: str, project: Project, where: str) -> bytes:
        """The bytes of a task's image (see the module doc for what may be read), within the body
        cap and FETCH_TIMEOUT_S for the whole download."""
        limit = self.config.max_body_bytes
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            if ";base64" not in head:
                raise ApiError(400, f"{where}: a data: URI must be base64", where)
            if len(data) * 3 // 4 > limit:
                raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                raise ApiError(400, f"{where}: the data: URI is not valid base64", where) from None
        target, token = self.source(url, project, where)
        if target.startswith("file:"):
            path = anyio.Path(target[5:])
            if (await path.stat()).st_size > limit:
                raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
            return await path.read_bytes()
        headers = {"Authorization": f"Token {token}"} if token else {}
        try:
            with anyio.fail_after(FETCH_TIMEOUT_S):
                return await self._download(target, headers, limit, where)
        except TimeoutError:
            raise ApiError(
                504, f"{where}: Label Studio sent no image within {FETCH_TIMEOUT_S:.0f} s", where
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise ApiError(
                400, f"{where}: cannot read the image from Label Studio ({type(exc).__name__})", where
            ) from None

    async def _download(self, url: str, headers: dict[str, str], limit: int, where: str) -> bytes:
        async with (
            httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", url, headers=headers) as answer,
        ):
            if answer.status_code != 200:
                hint = (
                    " (check the project's token / label_studio_token)"
                    if answer.status_code in (401, 403)
                    else ""
                )
                raise ApiError(
                    400, f"{where}: Label Studio answered {answer.status_code} for the image{hint}", where
                )
            declared = answer.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
            chunks, size = [], 0
            async for chunk in answer.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"{where}: image exceeds {limit} bytes", where)
                chunks.append(chunk)
            return b"".join(chunks)

    def task_image_url(self, task: dict[str, Any], config: LabelConfig, where: str) -> str:
        """The task's image URL (the data key the labeling config's <Image> shows)."""
        url = (task.get("data") or {}).get(config.image_value) if isinstance(task.get("data"), dict) else None
        if not isinstance(url, str) or not url:
            raise ApiError(400, f"{where}.data.{config.image_value}: the task has no image URL", where)
        return url

    async def handle(self, url: str, project: Project, body: dict[str, Any], where: str) -> Any:
        """The task image's embedding: cached by project and URL (LRU), else read and embedded in
        the heavy lane (a data: URI is cached by its pixels only)."""
        key = None if url.startswith("data:") else f"{project_id(body)}|{url}"
        with self.lock:
            cached = self.image_keys.get(key) if key else None
            if cached is not None:
                self.image_keys.move_to_end(key)
        if cached is not None:
            handle = self.service.engine.lookup(cached)
            if handle is not None:
                return handle
        data = await self.image_bytes(url, project, f"{where}.data")
        handle, _ = await self.service.handle_for_upload(data, f"{where}.data")
        if key:
            with self.lock:
                self.image_keys[key] = handle.key
                while len(self.image_keys) > IMAGE_KEYS:
                    self.image_keys.popitem(last=False)
        return handle

    # -- interactive -----------------------------------------------------------------------------
    async def interactive(
        self,
        body: dict[str, Any],
        task: dict[str, Any],
        regions: list[Any],
        config: LabelConfig,
        project: Project,
    ) -> dict[str, Any]:
        """Keypoints (positive / negative) and the last rectangle of `regions` -> one brush mask."""
        if config.brush is None:
            raise ApiError(
                400, "label_config: interactive masks need a <BrushLabels> on the image", "label_config"
            )
        click = read_context(regions, self.config.max_points_per_prompt)
        url = self.task_image_url(task, config, "tasks[0]")
        handle = await self.handle(url, project, body, "tasks[0]")
        h, w = handle.original_size
        points, labels, box = [], [], None
        for i, region in enumerate(click.regions):
            geometry = ls_geometry(region, w, h, f"params.context.result[{i}]")
            if region["type"] == "keypointlabels":
                points.append(geometry.tolist())
                labels.append(0 if region.get("is_positive") is False else 1)
            else:
                box = geometry.tolist()
        try:
            prompt = self.service.prompt_model(points=points or None, labels=labels or None, box=box)
            converted = self.service.to_prompts([prompt], handle)
        except ApiError as exc:  # named for /predict's body: name the regions instead
            message = exc.message.replace("prompts[0]", "params.context.result")
            raise ApiError(exc.error_code.value, message, "params.context.result") from None
        except ValueError as exc:  # pydantic's ValidationError
            raise ApiError(400, f"params.context.result: {exc}", "params.context.result") from None
        label = config.brush_label(click.label) or config.brush_labels[0]
        service = self.service

        def work() -> tuple[dict[str, Any], float]:
            (answer,) = service.decode_prompts(handle, converted, True, "rle")
            best = answer["best"]
            mask = decode_rle(answer["masks"][best])
            return brush_result(mask, label, config.brush, config.image, answer["iou"][best]), answer["iou"][
                best
            ]

        result, score = await service.predict_lane.run(work, budget_s=self.config.light_timeout_s)
        return {"result": [result], "score": score, "model_version": self.model_version()}

    # -- batch -----------------------------------------------------------------------------------
    async def batch(
        self, body: dict[str, Any], tasks: list[dict], config: LabelConfig, project: Project
    ) -> list[dict[str, Any]]:
        """One prediction per task (module doc), all within the request's deadline."""
        if config.brush is None:
            raise ApiError(
                400, "label_config: predictions are brush masks and need a <BrushLabels>", "label_config"
            )
        if len(tasks) > MAX_TASKS:
            raise ApiError(400, f"tasks: {len(tasks)} tasks exceed the limit of {MAX_TASKS}", "tasks")
        version, budget, out = self.model_version(), self.config.request_timeout_s, []
        try:
            with anyio.fail_after(budget):
                for i, task in enumerate(tasks):
                    where = f"tasks[{i}]"
                    data = await self.image_bytes(
                        self.task_image_url(task, config, where), project, f"{where}.data"
                    )
                    if self.config.student_checkpoint:
                        result, score = await self.from_student(data, config)
                    else:
                        result, score = await self.from_annotations(data, task, config, where)
                    out.append({"result": result, "score": score, "model_version": version})
        except TimeoutError:
            raise ApiError(
                504,
                f"deadline exceeded: {len(out)} of {len(tasks)} tasks predicted in {budget} s; select fewer",
                "tasks",
            ) from None
        return out

    async def from_student(self, data: bytes, config: LabelConfig) -> tuple[list[dict], float]:
        """The served student's answer as brushes (semantic: per class named like a brush label;
        instance: per instance, its class's brush label or the first)."""
        meta, _, answers = await self.service.student_answers_for([data], 0.5)
        names, answer = meta["class_names"] or [], answers[0]

        def work() -> tuple[list[dict], float]:
            result = []
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

        return await self.service.segment_lane.run(work, budget_s=self.config.light_timeout_s)

    async def from_annotations(
        self, data: bytes, task: dict[str, Any], config: LabelConfig, where: str
    ) -> tuple[list[dict], float]:
        """The task's last annotation refined by SeSAM: one brush per class (brush label order).
        Regions are matched to brush labels case-insensitively; others are left out."""
        annotations = task.get("annotations") if isinstance(task.get("annotations"), list) else []
        last = annotations[-1] if annotations and isinstance(annotations[-1], dict) else {}
        regions = last.get("result") if isinstance(last.get("result"), list) else []
        names = config.brush_labels
        ids = {n: i for i, n in enumerate(names)}
        max_pixels = self.config.max_image_pixels

        def weak_labels() -> tuple[dict[str, Any], bytes | None]:
            h, w = read_image_size(
                data, max_pixels=max_pixels, name=f"{where}.data"
            )  # decoded once, in refine
            kept = []
            for region in regions:
                if not isinstance(region, dict) or region.get("type") not in LABEL_STUDIO_KINDS:
                    continue
                try:
                    label = config.brush_label(ls_label(region, where))
                except ValueError:
                    label = None
                if label is not None:  # named like the brush label
                    kept.append(region | {"value": region["value"] | {region["type"]: [label]}})
            weak = label_studio_regions(kept, ids, f"{where}.annotations", size=(h, w), max_pixels=max_pixels)
            if weak is None:
                return {}, None
            coarse = None
            if weak.coarse is not None:
                buffer = io.BytesIO()
                Image.fromarray(weak.coarse).save(buffer, format="PNG")
                coarse = buffer.getvalue()
            return {k: v for k, v in weak.to_json().items() if k != "version"}, coarse

        try:
            body, coarse = await self.service.segment_lane.run(
                weak_labels, budget_s=self.config.light_timeout_s
            )
        except ImageTooLarge as exc:
            raise ApiError(413, str(exc), f"{where}.data") from None
        except ValueError as exc:
            raise ApiError(400, str(exc), f"{where}.annotations") from None
        if not body:
            return [], 0.0
        options = self.service.refine_options("sesam")
        out = await self.service.refine_bytes(
            data, body, coarse, "sesam", options, "png", len(names), weak_field=f"{where}.annotations"
        )

        def brushes() -> list[dict]:
            labels = decode_labels(out["labels"])
            present = (int(c) for c in np.unique(labels) if c != UNLABELED and c < len(names))
            return [brush_result(labels == c, names[c], config.brush, config.image) for c in present]

        result = await self.service.segment_lane.run(brushes, budget_s=self.config.light_timeout_s)
        return result, 1.0 if result else 0.0


def project_id(body: dict[str, Any]) -> str:
    """Label Studio's project id ("<id>.<timestamp>" -> "<id>")."""
    return str(body.get("project") or "").split(".")[0]


def _backend() -> LabelStudioBackend:
    service = bentoml.get_current_service()
    backend = getattr(service, "label_studio", None)
    if backend is None:
        backend = service.label_studio = LabelStudioBackend(service)
    return backend


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        raise ApiError(400, "body: not JSON", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: a JSON object is required", "body")
    return body


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "UP", "model_class": "sesam", "model_version": _backend().model_version()})


async def setup(request: Request) -> JSONResponse:
    return JSONResponse(_backend().setup(await _json(request)))


async def predict(request: Request) -> JSONResponse:
    backend, body = _backend(), await _json(request)
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
        raise ApiError(400, "tasks: a non-empty list of task objects is required", "tasks")
    xml = body.get("label_config")
    if not isinstance(xml, str):
        raise ApiError(400, "label_config: the project's labeling config (XML) is required", "label_config")
    config = parse_label_config(xml)
    project = backend.project(body)
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    context = params.get("context") if isinstance(params.get("context"), dict) else {}
    regions = context.get("result")
    if regions:
        if not isinstance(regions, list):
            raise ApiError(
                400, "params.context.result: a list of regions is required", "params.context.result"
            )
        results = [await backend.interactive(body, tasks[0], regions, config, project)]
    else:
        results = await backend.batch(body, tasks, config, project)
    return JSONResponse({"results": results})


async def webhook(request: Request) -> JSONResponse:
    body = await _json(request)
    action = str(body.get("action", ""))[:100]
    note = "training runs with `sesam train`, not from Label Studio" if action == "START_TRAINING" else ""
    return JSONResponse({"status": "ok", "action": action} | ({"note": note} if note else {}))


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):
        raise exc
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
