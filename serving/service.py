"""The BentoML service: `bentoml serve serving.service:SegmentationService` (or `make serve`).

Routes (all POST; multipart when an image file is sent):

- `/embed`    image -> image_id (the engine's content hash of the pixels), width, height, cached
              flag and backend; the embedding stays server-side.
- `/predict`  image or image_id + prompts (points/labels, box, mask_input_id) -> per prompt masks
              (COCO RLE, PNG or polygons), IoU and stability scores, the index of the best one, and
              a logits_id to send back as the next click's mask_input_id.
- `/refine`   image + weak labels (JSON fields of the weak-label schema, which the server completes
              with version 2 and the image's size; a coarse mask as a PNG file) + method and options
              -> refined label map (PNG or per-class RLE) and stats. An image whose longer side is at
              most `refine_side` gets the map `sesam refine` computes in-process; a larger one is
              refined at that side and its map upsampled (nearest) to the image's size.
- `/segment`  images (one or more) -> the student's answer per image: a label map (semantic
              student; class names in the answer) or instances (instance student: mask as RLE or
              polygons, class, score, box), from a .pt checkpoint or an export directory (ONNX
              Runtime / TensorRT).
- `/info`     engine info (backend, cache, counters), limits, lanes, logits cache, student, batching.
- `/ls/...`    a Label Studio ML backend on the same models (`serving.label_studio`).
- `/ui/`       the click-to-mask page (`serving.ui`: static files over /embed and /predict).
- BentoML's `/livez`, `/readyz` (ready once every service has loaded and warmed up its models) and
  `/metrics`.

Concurrency by resource (docs/serving.md has the picture): in the front process
(`SegmentationService`) the cheap work runs in bounded lanes (`serving.lanes`): clicks on a cached
embedding (the predict lane) and a student forward (the segment lane); /info answers directly.
Image encodings and /refine run in `HeavyLane`, a second BentoML service in its own process(es)
at lower CPU priority (`heavy_nice`, 0 for equal), one request at a time per process with a bounded
queue (BentoML's `max_concurrency`). So no expensive request can stall a cheap one, a full queue
is a 503 with Retry-After, and every lane request has a deadline (503/504 past it; heavy work is
stopped at its next deadline check). Embeddings computed by the heavy lane come back to the front's
cache.

Errors follow one contract (`serving.errors`), checked in front of BentoML's parser by the guard
middleware (`serving.middleware`). Configuration: `serving.config.ServiceConfig` (SESAM_CONFIG
YAML and SESAM_* environment). With the engine's backend `auto` and no SAM checkpoint or export,
the weight-free classical prior answers (it is not SAM).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from pydantic import Field

from models.config import lookup
from models.engine import EmbeddingCache, ImageHandle, Prompt, build_engine, read_image, validate_prompts
from models.engine.validation import ImageTooLarge
from models.io import read_label_png
from models.labels import (
    LABELERS,
    backend_defaults,
    build_labeler,
    check_weak_kinds,
)
from models.labels.common import chunk_size
from models.labels.schema import SCHEMA_VERSION, WeakLabels
from models.runtime.deadline import DeadlineExceeded, check_deadline, deadline
from models.students.runtime import Segmenter, load_segmenter
from serving import startup
from serving.codec import (
    INSTANCE_MASK_FORMATS,
    LABEL_FORMATS,
    MASK_FORMATS,
    decode_instances,
    encode_instances,
    encode_labels,
    encode_mask,
)
from serving.config import ServiceConfig
from serving.errors import ApiError, install_log_filter, normalize_body
from serving.inputs import prompt_model, strict_options, weak_model
from serving.label_studio import label_studio_app
from serving.lanes import DecodeCost, Lane
from serving.middleware import GuardMiddleware, RouteSpec
from serving.ui import ui_app


def _load_config() -> ServiceConfig:
    startup.watch_for_fatal_workers()
    try:
        return ServiceConfig.load()
    except ValueError as exc:
        startup.fail(f"configuration: {exc}", code=2)
        raise  # not reached: fail exits


# read when BentoML imports this module to start serving (the supervisor and each worker process
# import it): lanes, caps, timeouts and the guard below are declared with the services
CONFIG = _load_config()
install_log_filter()
PromptIn = prompt_model(CONFIG)
WeakIn = weak_model(CONFIG)
METHODS = tuple(LABELERS)  # the refinement methods /refine offers: every registered labeler
# labeler options that name model files -> the service setting that provides them
SERVER_PATH_OPTIONS = {"cam": "cam_checkpoint", "wsod": "wsod_checkpoint", "detector": "detector"}
SEGMENT_OUTPUTS = ("auto", "labels", "instances")
INSTANCE_TOP_K = 100  # instances an instance student answers per image at most
FILE_KEYS = 4096  # upload hashes remembered -> embedding keys (a re-sent image skips the heavy lane)
# BentoML 1.4 turns an uploaded part into a Path only for `Path` and `list[Path]` fields (not
# `Path | None`), so an optional file is a list of at most one.
OPTIONAL_FILE = Field(default_factory=list, max_length=1)
LIGHT_SLOTS = CONFIG.light_slots or os.cpu_count() or 1
WARM_BATCH = 64  # prompts in the warm-up's timed decode at most (SAM's own decode batch)


# -- work shared by the processes ----------------------------------------------------------------
def warm_up(engine: Any) -> float:
    """One embed and one click on a small synthetic image (loads kernels, fills caches); then the
    click repeated as one decoder batch (the engine's `decode_batch`, at most WARM_BATCH), timed:
    seconds per prompt on a small image when prompts go through the decoder together, as those of
    a large request do (`DecodeCost.calibrate`: a lower bound per prompt, not one click's time)."""
    warm = np.zeros((64, 96, 3), np.uint8)
    warm[16:48, 24:72] = 200
    handle = engine.embed([warm])[0]
    click = Prompt(points=np.array([[48.0, 32.0]]), labels=np.array([1]))
    engine.predict(handle, [click])
    batch = min(int(getattr(engine, "decode_batch", WARM_BATCH)), WARM_BATCH)
    batch = max(1, min(batch, getattr(engine, "max_prompts", None) or batch))
    start = time.perf_counter()
    engine.predict(handle, [click] * batch)
    return (time.perf_counter() - start) / batch


def load_student(config: ServiceConfig) -> Segmenter:
    """The configured student (semantic or instance, any runtime), warmed up on a small image."""
    student = load_segmenter(
        config.student_checkpoint,
        config.student_runtime,
        config.engine.device,
        config.student_providers,
        config.student_threads,
        batch_size=config.max_batch_size,
        onnx_file=config.student_onnx_file,
    )
    student.segment([np.zeros((64, 64, 3), np.uint8)])
    return student


def student_answers(student: Segmenter, images: list[np.ndarray], min_score: float = 0.0) -> list:
    """Label maps (HxW uint8) of a semantic student, or per image the RLE-encoded instances (best
    first, at most INSTANCE_TOP_K, score >= min_score, dropped before any upsampling) of an
    instance student."""
    if student.task == "semantic":
        return student.segment(images)
    results = student.segment(images, top_k=INSTANCE_TOP_K, min_score=min_score)
    return [encode_instances(*r, student.class_names, "rle") for r in results]


def read_pixels(data: bytes, field: str) -> np.ndarray:
    """Decode an upload under the pixel cap: 413 over it, 400 when it is not an image."""
    try:
        return read_image(data, max_pixels=CONFIG.max_image_pixels, name=field)
    except ValueError as exc:
        raise value_error(exc, field) from None


def value_error(exc: Exception, field: str) -> ApiError:
    """A ValueError from validation -> 413 for an image over the pixel cap, else 400."""
    return ApiError(413 if isinstance(exc, ImageTooLarge) else 400, str(exc), field)


def dependency_error(exc: BentoMLException) -> tuple[int, str, str | None]:
    """(status, message, field) of an error answered by one of our dependency services."""
    status = getattr(getattr(exc, "error_code", None), "value", 500)
    body = normalize_body(status, str(exc).encode())["error"]
    return status, body["message"], body["field"]


def as_reply(work: Callable[[], Any], deadline_at: float) -> bytes:
    """Run heavy work under the request's deadline (`deadline_at`: epoch seconds, set by the front
    when it hands the work over, so the time it waited in the heavy lane's queue counts); answer
    ("ok", value), or ("error", status, message, field) for an ApiError, a deadline passed while
    queued (503) or one passed while working (504), pickled (the heavy lane only talks to the front
    process). Any other exception propagates (BentoML answers it as a server error)."""
    left = deadline_at - time.time()
    try:
        if left <= 0:
            raise ApiError(503, "busy: the request waited for the heavy lane past its deadline; retry later")
        with deadline(left):
            reply: tuple = ("ok", work())
    except ApiError as exc:
        reply = ("error", exc.error_code.value, exc.message, exc.field)
    except DeadlineExceeded as exc:
        reply = ("error", 504, f"deadline exceeded: {exc}", None)
    return pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)


# -- the heavy lane ---------------------------------------------------------------------------------
@bentoml.service(
    name="sesam-heavy",
    workers=CONFIG.heavy_workers,
    threads=1,
    traffic={
        "timeout": CONFIG.request_timeout_s + 30,
        "max_concurrency": CONFIG.heavy_workers * (1 + CONFIG.heavy_queue),
    },
)
class HeavyLane:
    """Image encodings and refinement, one at a time per process, at the CPU niceness `heavy_nice`
    (lower priority unless it is 0)."""

    def __init__(self) -> None:
        with startup.guard("heavy lane"):
            if CONFIG.heavy_nice:
                os.nice(CONFIG.heavy_nice)
            self.engine = build_engine(CONFIG.engine)
            warm_up(self.engine)

    @bentoml.api
    def embed(self, image: bytes, deadline_at: float, field: str = "image") -> bytes:
        """Pickled ("ok", {key, size, payload, nbytes}) for an image file's bytes, or an error reply
        (`as_reply`)."""

        def work() -> dict[str, Any]:
            pixels = read_pixels(image, field)
            try:
                handle = self.engine.embed([pixels])[0]
            except ValueError as exc:
                raise value_error(exc, field) from None
            return {
                "key": handle.key,
                "size": handle.original_size,
                "payload": handle.payload,
                "nbytes": int(self.engine.payload_nbytes(handle.payload)),
            }

        return as_reply(work, deadline_at)

    @bentoml.api
    def refine(self, request: bytes, deadline_at: float) -> bytes:
        """Pickled ("ok", {labels, stats, width, height}) for a pickled /refine request, or an error
        reply (`as_reply`)."""
        args = pickle.loads(request)
        return as_reply(lambda: self._refine(**args), deadline_at)

    def _refine(
        self,
        image: bytes,
        weak: dict[str, Any],
        coarse: bytes | None,
        method: str,
        options: dict[str, Any],
        label_format: str,
        num_classes: int | None,
    ) -> dict[str, Any]:
        from models.jobs.refine import refine_at

        pixels = read_pixels(image, "image")
        h, w = pixels.shape[:2]
        try:
            labels = WeakLabels.from_json({"version": SCHEMA_VERSION, "width": w, "height": h} | weak, "weak")
            if (labels.height, labels.width) != (h, w):
                raise ApiError(
                    400,
                    f"weak: labels are for a {labels.width}x{labels.height} image, the image is {w}x{h}",
                    "weak",
                )
            if coarse is not None:
                labels.coarse = read_label_png(io.BytesIO(coarse), source="coarse_mask", expected_size=(h, w))
            labels.validate(num_classes, "weak" + (" / coarse_mask" if coarse is not None else ""))
            labeler = build_labeler(method, self.engine, **options)
            check_weak_kinds(labeler, labels, "weak")
            result, stats = refine_at(labeler, pixels, labels, CONFIG.refine_side)
        except (ValueError, TypeError) as exc:
            message = str(exc)
            field = (
                "coarse_mask"
                if message.startswith("coarse_mask")
                else ("options" if message.startswith(method) else "weak")
            )
            raise value_error(exc, field) from None
        return {
            "labels": encode_labels(result, label_format),
            "stats": stats | {"weak_kinds": labels.kinds()},
            "width": w,
            "height": h,
        }


# -- the student behind adaptive batching ---------------------------------------------------------
@bentoml.service(name="sesam-student", workers=1, traffic={"timeout": CONFIG.light_timeout_s + 30})
class StudentBatcher:
    """The student behind BentoML's adaptive batching: concurrent /segment requests share forwards.
    With batching on, this is the only process that loads the student."""

    def __init__(self) -> None:
        with startup.guard("student"):
            self.student = load_student(CONFIG)

    @bentoml.api
    def describe(self) -> dict:
        s = self.student
        return {"name": s.name, "task": s.task, "runtime": s.runtime, "class_names": s.class_names}

    @bentoml.api
    def info(self) -> dict:
        return self.student.info()

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def label_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return student_answers(self.student, images)

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def instances(self, items: list[dict]) -> list[list[dict]]:
        """items: {"image": HxWx3 uint8, "min_score": float} from concurrent requests; instances
        under the batch's lowest min_score are dropped before upsampling, each request's own
        threshold is applied to its answer."""
        floor = min(float(item["min_score"]) for item in items)
        answers = student_answers(self.student, [item["image"] for item in items], floor)
        return [
            [r for r in answer if r["score"] >= float(item["min_score"])]
            for item, answer in zip(items, answers, strict=True)
        ]


ImageFile = Annotated[Path, Field(description="an image file (JPEG, PNG, WebP, TIFF, BMP)")]
Score = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]


@bentoml.service(name="sesam", traffic={"timeout": CONFIG.request_timeout_s + 60})
class SegmentationService:
    """Weak-label refinement, interactive SAM prompts and student inference over HTTP."""

    heavy = bentoml.depends(HeavyLane)
    # one /predict prompt (limits from CONFIG); the Label Studio backend builds them too
    prompt_model = PromptIn
    if CONFIG.student_checkpoint and CONFIG.batching:
        student_batcher = bentoml.depends(StudentBatcher)

    def __init__(self) -> None:
        self.config = CONFIG
        self.ready = False
        with startup.guard("service"):
            self.engine = build_engine(self.config.engine)
            self.logits = EmbeddingCache(self.config.logits_cache_bytes)
            batched = bool(self.config.student_checkpoint and self.config.batching)
            self.student = (
                load_student(self.config) if self.config.student_checkpoint and not batched else None
            )
            self.student_meta: dict | None = None
            if self.student is not None:
                s = self.student
                self.student_meta = {
                    "name": s.name,
                    "task": s.task,
                    "runtime": s.runtime,
                    "class_names": s.class_names,
                }
            self.decode_cost = DecodeCost()  # /predict refused up front when it cannot finish in time
            self.decode_cost.calibrate(warm_up(self.engine))
        retry = self.config.retry_after_s
        self.predict_lane = Lane("predict", LIGHT_SLOTS, self.config.light_queue, retry)
        self.segment_lane = Lane("segment", LIGHT_SLOTS, self.config.light_queue, retry)
        self._file_keys: OrderedDict[str, str] = OrderedDict()
        self._keys_lock = threading.Lock()
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    # -- helpers --------------------------------------------------------------------------------
    async def _heavy(self, call: Callable[[float], Any]) -> Any:
        """Await a heavy-lane call (given the request's deadline, epoch seconds) within that
        deadline; map its refusals to ours."""
        budget = self.config.request_timeout_s
        try:
            with anyio.fail_after(budget + 2):
                raw = await call(time.time() + budget)
        except TimeoutError:
            raise ApiError(
                504, f"deadline exceeded: the heavy lane gave no answer within {budget} s"
            ) from None
        except BentoMLException as exc:
            status, message, field = dependency_error(exc)
            if status == 429:
                raise ApiError(
                    503,
                    f"busy: the heavy lane (image encodings, /refine) is full; retry after "
                    f"{self.config.retry_after_s} s",
                    None,
                    {"Retry-After": str(self.config.retry_after_s)},
                ) from None
            raise ApiError(status, message, field) from None
        reply = pickle.loads(raw)  # from our own heavy lane process, never from a client
        if reply[0] == "error":
            raise ApiError(reply[1], reply[2], reply[3])
        return reply[1]

    async def handle_for_upload(self, data: bytes, field: str) -> tuple[ImageHandle, bool]:
        """The embedding of an uploaded image: from the cache, else from the heavy lane."""
        file_key = hashlib.sha256(data).hexdigest()
        with self._keys_lock:
            key = self._file_keys.get(file_key)
        if key is not None:
            handle = self.engine.lookup(key)
            if handle is not None:
                return handle, True
        out = await self._heavy(lambda at: self.heavy.to_async.embed(image=data, deadline_at=at, field=field))
        self.engine.cache.put(out["key"], out["payload"], out["nbytes"])
        with self._keys_lock:
            self._file_keys[file_key] = out["key"]
            while len(self._file_keys) > FILE_KEYS:
                self._file_keys.popitem(last=False)
        size = tuple(out["size"])
        return ImageHandle(out["key"], size, self.engine.name, out["payload"], self.engine.cache_space), False

    def to_prompts(self, prompts: list[Any], handle: ImageHandle) -> list[Prompt]:
        out = []
        for i, p in enumerate(prompts):
            mask_logits = None
            if p.mask_input_id is not None:
                stored = self.logits.get(p.mask_input_id)
                if stored is None:
                    raise ApiError(
                        404,
                        f"prompts[{i}].mask_input_id {p.mask_input_id!r} is unknown or expired",
                        f"prompts[{i}].mask_input_id",
                    )
                if stored[0] != handle.key:
                    raise ApiError(
                        400,
                        f"prompts[{i}].mask_input_id belongs to another image",
                        f"prompts[{i}].mask_input_id",
                    )
                mask_logits = stored[1]
            out.append(
                Prompt(
                    points=None if p.points is None else np.asarray(p.points, np.float64).reshape(-1, 2),
                    labels=None if p.labels is None else np.asarray(p.labels, np.int64),
                    box=None if p.box is None else np.asarray(p.box, np.float64),
                    mask_logits=mask_logits,
                )
            )
        try:
            validate_prompts(out, handle.original_size)
        except ValueError as exc:
            message = str(exc)
            match = re.match(r"prompt (\d+)", message)
            field = f"prompts[{match.group(1)}]" if match else "prompts"
            raise ApiError(
                400, message.replace(match.group(0), field, 1) if match else message, field
            ) from None
        return out

    def decode_prompts(
        self, handle: ImageHandle, prompts: list[Prompt], multimask: bool, mask_format: str
    ) -> list[dict]:
        """Decode in chunks whose full-size masks stay under max_mask_bytes; encode each chunk's
        masks before the next (memory is O(chunk), not O(prompts))."""
        chunk = chunk_size(handle.original_size, multimask, self.config.max_mask_bytes)
        pixels = handle.original_size[0] * handle.original_size[1]
        predictions = []
        for start in range(0, len(prompts), chunk):
            check_deadline()
            began = time.perf_counter()
            try:
                out = self.engine.predict(handle, prompts[start : start + chunk], multimask=multimask)
            except ValueError as exc:
                raise ApiError(400, str(exc), "prompts") from None
            self.decode_cost.observe(time.perf_counter() - began, len(out), pixels)
            for i in range(len(out)):
                best = int(np.argmax(out.iou[i]))
                logits_id = uuid.uuid4().hex
                logits = np.ascontiguousarray(out.low_res_logits[i, best : best + 1], dtype=np.float32)
                self.logits.put(logits_id, (handle.key, logits), logits.nbytes)
                predictions.append(
                    {
                        "masks": [encode_mask(m, mask_format) for m in out.masks[i]],
                        "iou": [round(float(v), 6) for v in out.iou[i]],
                        "stability": [round(float(v), 6) for v in out.stability[i]],
                        "best": best,
                        "logits_id": logits_id,
                    }
                )
            del out
        return predictions

    def _model_paths(self, method: str, options: dict[str, Any]) -> dict[str, Any]:
        """The request's options checked and completed: options that name model files are refused
        (they come from the server's configuration, never from a request: a client must not make the
        server open paths of its choosing) and filled in per method from the configuration; a value
        of the wrong JSON type (`strict_options`; unknown names are left to the labeler) and a
        points_per_side grid over `max_weak_labels` prompts are a 400."""
        given = sorted(set(options) & set(SERVER_PATH_OPTIONS))
        if given:
            where = ", ".join(f"{k} (SESAM_{SERVER_PATH_OPTIONS[k].upper()})" for k in given)
            raise ApiError(
                400,
                f"options.{given[0]}: {where} is set on the server, not per request",
                f"options.{given[0]}",
            )
        options_cls = lookup(LABELERS, method, "refinement method").options
        strict_options(options_cls, options)
        c, options = self.config, dict(options)
        side = options.get("points_per_side", getattr(options_cls(), "points_per_side", None))
        if side is not None and side * side > c.max_weak_labels:
            raise ApiError(
                400,
                f"options.points_per_side: {side} makes {side * side} prompts, over the limit of {c.max_weak_labels}",
                "options.points_per_side",
            )
        if side:
            self.decode_cost.refuse_grid_over(side, c.request_timeout_s, "options.points_per_side")
        if method in ("sepl", "weaksam") and c.cam_checkpoint:
            options["cam"] = c.cam_checkpoint
        if method == "weaksam" and c.wsod_checkpoint:
            options["wsod"] = c.wsod_checkpoint
            options.setdefault("scorer", "wsod")  # a configured detector is the one to use
        if method == "grounded" and c.detector:
            options["detector"] = c.detector
        return options

    def refine_options(self, method: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """A refinement's options checked and completed (`_model_paths`, the engine's defaults)."""
        return backend_defaults(method, self.engine.name, self._model_paths(method, options or {}))

    # -- routes ---------------------------------------------------------------------------------
    @bentoml.api(route="/embed")
    async def embed(self, image: ImageFile) -> dict:
        """Embed an image once; later /predict calls may send its image_id instead of the pixels."""
        data = await anyio.Path(image).read_bytes()
        handle, cached = await self.handle_for_upload(data, "image")
        h, w = handle.original_size
        return {
            "image_id": handle.key,
            "width": w,
            "height": h,
            "cached": cached,
            "backend": self.engine.name,
        }

    @bentoml.api(route="/predict")
    async def predict(
        self,
        prompts: Annotated[list[PromptIn], Field(min_length=1, max_length=CONFIG.max_prompts)],  # type: ignore[valid-type]
        image: list[Path] = OPTIONAL_FILE,
        image_id: Annotated[str, Field(max_length=128)] | None = None,
        multimask: Annotated[bool, Field(strict=True)] = True,
        mask_format: Literal[MASK_FORMATS] = "rle",  # type: ignore[valid-type]
    ) -> dict:
        """Masks for each prompt: 3 candidates (1 without multimask) with IoU and stability scores,
        the best candidate's index and a logits_id for the next click."""
        if bool(image) == (image_id is not None):
            raise ApiError(
                400, "image: send exactly one of image (a file) or image_id (from /embed)", "image"
            )
        if image:
            handle, _ = await self.handle_for_upload(await anyio.Path(image[0]).read_bytes(), "image")
        else:
            handle = self.engine.lookup(image_id)
            if handle is None:
                raise ApiError(
                    404,
                    f"image_id: {image_id!r} is unknown or was evicted; POST the image to /embed",
                    "image_id",
                )
        converted = self.to_prompts(prompts, handle)
        h, w = handle.original_size
        self.decode_cost.refuse_over(len(converted), h * w, self.config.light_timeout_s)
        predictions = await self.predict_lane.run(
            self.decode_prompts,
            handle,
            converted,
            multimask,
            mask_format,
            budget_s=self.config.light_timeout_s,
        )
        h, w = handle.original_size
        return {
            "image_id": handle.key,
            "width": w,
            "height": h,
            "backend": self.engine.name,
            "mask_format": mask_format,
            "predictions": predictions,
        }

    @bentoml.api(route="/refine")
    async def refine(
        self,
        image: ImageFile,
        weak: WeakIn | None = None,  # type: ignore[valid-type]
        coarse_mask: list[Path] = OPTIONAL_FILE,
        method: Literal[METHODS] = "sesam",  # type: ignore[valid-type]
        options: dict[str, Any] | None = None,
        label_format: Literal[LABEL_FORMATS] = "png",  # type: ignore[valid-type]
        num_classes: Annotated[int, Field(ge=1, le=255, strict=True)] | None = None,
    ) -> dict:
        """Weak labels -> a dense label map (255 = unlabeled), as `sesam refine` computes it for
        an image within `refine_side` (a larger one is refined at that side, see the module)."""
        opts = self.refine_options(method, options)
        out = await self.refine_bytes(
            await anyio.Path(image).read_bytes(),
            weak.model_dump(exclude_none=True) if weak is not None else {},
            await anyio.Path(coarse_mask[0]).read_bytes() if coarse_mask else None,
            method,
            opts,
            label_format,
            num_classes,
        )
        return {
            "method": method,
            "options": opts,
            "backend": self.engine.name,
            "width": out["width"],
            "height": out["height"],
            "labels": out["labels"],
            "stats": out["stats"],
        }

    async def refine_bytes(
        self,
        image: bytes,
        weak: dict[str, Any],
        coarse: bytes | None,
        method: str,
        options: dict[str, Any],
        label_format: str,
        num_classes: int | None,
        weak_field: str = "weak",
    ) -> dict[str, Any]:
        """Refine in the heavy lane: {labels (encoded as `label_format`), stats, width, height}.
        Weak labels the method decodes one prompt each for (`prompts_each`) that cannot be decoded
        within the heavy deadline are a 413 on `weak_field` (where the request holds them) before
        the lane is asked."""
        kinds = LABELERS[method].labeler.prompts_each
        counted = sum(len(weak.get(kind) or ()) for kind in kinds)
        if counted:
            self.decode_cost.refuse_labels_over(counted, self.config.request_timeout_s, weak_field)
        request = {
            "image": image,
            "weak": weak,
            "coarse": coarse,
            "method": method,
            "options": options,
            "label_format": label_format,
            "num_classes": num_classes,
        }
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        return await self._heavy(lambda at: self.heavy.to_async.refine(request=payload, deadline_at=at))

    async def _student_meta(self) -> dict:
        if self.student_meta is None:
            self.student_meta = await self.student_batcher.to_async.describe()
        return self.student_meta

    def _segment_local(self, datas: list[bytes], min_score: float) -> tuple[list[np.ndarray], list]:
        pixels = [read_pixels(d, f"images[{i}]") for i, d in enumerate(datas)]
        check_deadline()
        try:
            return pixels, student_answers(self.student, pixels, min_score)
        except ValueError as exc:
            raise ApiError(400, str(exc), "images") from None

    @bentoml.api(route="/segment")
    async def segment(
        self,
        images: list[Path] = Field(default_factory=list),  # noqa: B008 (BentoML reads the default)
        output: Literal[SEGMENT_OUTPUTS] = "auto",  # type: ignore[valid-type]
        label_format: Literal[LABEL_FORMATS] = "png",  # type: ignore[valid-type]
        mask_format: Literal[INSTANCE_MASK_FORMATS] = "rle",  # type: ignore[valid-type]
        min_score: Score = 0.5,
    ) -> dict:
        """The student's answer for each image: a label map (semantic student) or instances with
        mask, class, score and box, score >= min_score, at most INSTANCE_TOP_K (instance student)."""
        if not self.config.student_checkpoint:
            raise ApiError(404, "no student configured (SESAM_STUDENT_CHECKPOINT)", None)
        meta = await self._student_meta()
        task = meta["task"]
        wanted = {"labels": "semantic", "instances": "instance"}.get(output, task)
        if wanted != task:
            raise ApiError(
                400,
                f"output: {output!r} is not meaningful for the {task} student {meta['name']!r}; "
                f"send output={'labels' if task == 'semantic' else 'instances'} or auto",
                "output",
            )
        if not images:
            raise ApiError(400, "images: at least one image file is required", "images")
        if len(images) > self.config.max_images:
            raise ApiError(
                400, f"images: {len(images)} images exceed the limit of {self.config.max_images}", "images"
            )
        datas = [await anyio.Path(p).read_bytes() for p in images]
        meta, pixels, answers = await self.student_answers_for(datas, min_score)
        results = []
        for image, answer in zip(pixels, answers, strict=True):
            h, w = image.shape[:2]
            result: dict[str, Any] = {"width": w, "height": h}
            if task == "semantic":
                result["labels"] = encode_labels(
                    np.asarray(answer, np.uint8), label_format, meta["class_names"]
                )
            else:
                kept = [item for item in answer if item["score"] >= min_score]
                if mask_format != "rle":
                    masks = decode_instances(kept, h, w, "rle")
                    kept = [item | {"mask": encode_mask(m, mask_format)} for item, m in zip(kept, masks)]
                result["instances"] = kept
            results.append(result)
        return {
            "student": meta["name"],
            "task": task,
            "runtime": meta["runtime"],
            "class_names": meta["class_names"],
            "format": label_format if task == "semantic" else mask_format,
            "results": results,
        }

    async def student_answers_for(self, datas: list[bytes], min_score: float) -> tuple[dict, list, list]:
        """(student meta, decoded images, answers) for image files, in the segment lane or through
        the batcher (`student_answers` gives the answers' shape)."""
        meta = await self._student_meta()
        if self.student is not None:
            pixels, answers = await self.segment_lane.run(
                self._segment_local, datas, min_score, budget_s=self.config.light_timeout_s
            )
            return meta, pixels, answers
        pixels = await self.segment_lane.run(
            lambda: [read_pixels(d, f"images[{i}]") for i, d in enumerate(datas)],
            budget_s=self.config.light_timeout_s,
        )
        batcher = self.student_batcher.to_async
        if meta["task"] == "semantic":
            return meta, pixels, await self._batched(batcher.label_maps, pixels)
        items = [{"image": p, "min_score": min_score} for p in pixels]
        return meta, pixels, await self._batched(batcher.instances, items)

    async def _batched(self, call: Callable, batch: list) -> list:
        budget = self.config.light_timeout_s
        try:
            with anyio.fail_after(budget):
                return await call(batch)
        except TimeoutError:
            raise ApiError(504, f"deadline exceeded: the student gave no answer within {budget} s") from None
        except BentoMLException as exc:
            status, message, field = dependency_error(exc)
            raise ApiError(400 if status < 500 else 503, message, field or "images") from None

    @bentoml.api(route="/info")
    async def info(self) -> dict:
        """The engine's info (backend, embedding cache, counters; an export folder by its name
        only), limits, lanes, the logits cache, the student, batching, auth and the tags models."""
        c = self.config
        student = None
        if self.student is not None:
            student = self.student.info()
        elif c.student_checkpoint:
            student = await self.student_batcher.to_async.info()
        engine = self.engine.info()
        if "export_dir" in engine:  # answers carry no server paths: the export's folder name only
            engine["export_dir"] = Path(engine["export_dir"]).name
        return engine | {
            "limits": {
                "max_prompts": c.max_prompts,
                "max_points_per_prompt": c.max_points_per_prompt,
                "max_weak_labels": c.max_weak_labels,
                "max_scribble_points": c.max_scribble_points,
                "max_image_pixels": c.max_image_pixels,
                "max_images": c.max_images,
                "max_field_bytes": c.max_field_bytes,
                "max_body_bytes": c.max_body_bytes,
                "max_mask_bytes": c.max_mask_bytes,
                "refine_side": c.refine_side,
                "request_timeout_s": c.request_timeout_s,
                "light_timeout_s": c.light_timeout_s,
            },
            "lanes": {
                "predict": self.predict_lane.info(),
                "segment": self.segment_lane.info(),
                "heavy": {
                    "workers": c.heavy_workers,
                    "queue_per_worker": c.heavy_queue,
                    "nice": c.heavy_nice,
                },
            },
            "logits_cache": self.logits.info(),
            "student": student,
            "batching": {
                "enabled": bool(c.batching),
                "max_batch_size": c.max_batch_size,
                "max_latency_ms": c.max_latency_ms,
            },
            "auth": c.api_key is not None,
            "refine_methods": list(METHODS),
            "tags_models": {
                "cam_checkpoint": c.cam_checkpoint is not None,
                "wsod_checkpoint": c.wsod_checkpoint is not None,
                "detector": c.detector is not None,
            },
        }


def route_specs(service: Any) -> dict[str, RouteSpec]:
    """Each route's declared fields, which are files and which may repeat (for the guard)."""
    specs = {}
    for api in service.apis.values():
        fields = api.input_spec.model_fields
        files = frozenset(getattr(api.input_spec, "multipart_fields", set()) or set())
        lists = frozenset(n for n in files if "list" in str(fields[n].annotation).lower())
        specs[api.route] = RouteSpec(frozenset(fields), files, lists, CONFIG.max_images)
    return specs


SegmentationService.add_asgi_middleware(
    GuardMiddleware,
    api_key=CONFIG.api_key,
    max_body_bytes=CONFIG.max_body_bytes,
    routes=route_specs(SegmentationService),
    max_field_bytes=CONFIG.max_field_bytes,
    retry_after_s=CONFIG.retry_after_s,
)
SegmentationService.mount_asgi_app(ui_app(), path="/ui", name="ui")
SegmentationService.mount_asgi_app(label_studio_app(), path="/ls", name="label-studio")
