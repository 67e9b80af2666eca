"""The BentoML service: `bentoml serve serving.service:SegmentationService` (or `make serve`).

Routes (all POST; multipart when an image file is sent):

- `/embed`    image -> image_id (content hash), size, cached flag; the embedding stays server-side.
- `/predict`  image or image_id + prompts (points/labels, box, mask_input_id) -> per prompt masks
              (COCO RLE, PNG or polygons), IoU and stability scores, and a logits_id to send back
              as the next click's mask_input_id.
- `/refine`   image + weak labels (schema v1 JSON; coarse mask as a PNG file) + method -> refined
              label map (PNG or per-class RLE) and stats: the same as `sesam refine` in-process.
- `/segment`  images (one or more) -> the student's answer per image: a label map with class names
              (semantic student) or instances (instance student: mask as RLE or polygons, class,
              score, box). The student runs from a .pt checkpoint (PyTorch) or an export directory
              (ONNX Runtime / TensorRT); adaptive batching across requests (auto: on with CUDA).
- `/info`     backend, limits, cache and counters.
- BentoML's `/livez`, `/readyz` (ready once every model is loaded and warmed up) and `/metrics`.

Configuration: `serving.config.ServiceConfig` (SESAM_CONFIG YAML and SESAM_* environment). With no
SAM checkpoint or export configured the weight-free classical prior answers (it is not SAM).
Errors are 4xx JSON naming the field; a request can fail, the worker does not.
"""

from __future__ import annotations

import threading
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from bentoml.validators import ContentType
from pydantic import BaseModel, Field

from models.engine import Prompt, build_engine, read_image
from models.engine.cache import EmbeddingCache
from models.engine.validation import ImageTooLarge
from models.io import read_label_png
from models.refine import LABELERS, backend_defaults, build_labeler, check_weak_kinds
from models.student_runtime import Segmenter, load_segmenter
from models.weak import SCHEMA_VERSION, WeakLabels
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
from serving.middleware import GuardMiddleware

# read when BentoML imports this module to start serving (each worker process imports it as it
# starts): the timeout, batching and guard below are declared with the services
CONFIG = ServiceConfig.load()
ImageFile = Annotated[Path, ContentType("image/*")]
METHODS = tuple(LABELERS)
# labeler options that name model files -> the service setting that provides them
SERVER_PATH_OPTIONS = {
    "cam": "cam_checkpoint",
    "wsod": "wsod_checkpoint",
    "detector": "detector",
}  # the refinement methods /refine offers: every registered labeler
# BentoML 1.4 turns an uploaded part into a Path only for `Path` and `list[Path]` fields (not
# `Path | None`), so an optional file is a list of at most one.
OPTIONAL_FILE = Field(default_factory=list, max_length=1)


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class PromptIn(BaseModel):
    """One prompt in original-image pixels: points [[x, y], ...] with labels (1 fg, 0 bg), a box, and/or
    the logits_id of an earlier prediction on the same image (SAM's mask input for the next click)."""

    points: list[tuple[float, float]] | None = Field(default=None, examples=[[[240.0, 180.0]]])
    labels: list[int] | None = Field(default=None, examples=[[1]])
    box: tuple[float, float, float, float] | None = Field(default=None, examples=[None])
    mask_input_id: str | None = Field(default=None, examples=[None])


SEGMENT_OUTPUTS = ("auto", "labels", "instances")
INSTANCE_TOP_K = 100  # instances an instance student answers per image at most (before min_score)


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


def student_answers(student: Segmenter, images: list[np.ndarray]) -> list:
    """Label maps (HxW uint8) of a semantic student, or per image the RLE-encoded instances (every
    score, best first; requests filter by their own min_score) of an instance student."""
    if student.task == "semantic":
        return student.segment(images)
    results = student.segment(images, top_k=INSTANCE_TOP_K, min_score=0.0)
    return [encode_instances(*r, student.class_names, "rle") for r in results]


def _bad(exc: Exception) -> BentoMLException:
    """A ValueError from validation -> 413 for an image over the pixel cap, else 400."""
    return PayloadTooLarge(str(exc)) if isinstance(exc, ImageTooLarge) else InvalidArgument(str(exc))


@bentoml.service(name="sesam-student", workers=1, traffic={"timeout": CONFIG.request_timeout_s})
class StudentBatcher:
    """The student behind BentoML's adaptive batching: concurrent /segment requests share forwards."""

    def __init__(self) -> None:
        self.student = load_student(CONFIG)

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def label_maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return student_answers(self.student, images)

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def instances(self, images: list[np.ndarray]) -> list[list[dict]]:
        return student_answers(self.student, images)


@bentoml.service(name="sesam", traffic={"timeout": CONFIG.request_timeout_s})
class SegmentationService:
    """Weak-label refinement, interactive SAM prompts and student inference over HTTP."""

    if CONFIG.student_checkpoint and CONFIG.batching:
        student_batcher = bentoml.depends(StudentBatcher)

    def __init__(self) -> None:
        self.config = CONFIG
        self.ready = False
        self.engine = build_engine(self.config.engine)
        self.max_pixels = self.config.max_image_pixels
        self.logits = EmbeddingCache(self.config.logits_cache_bytes)
        self.student = load_student(self.config) if self.config.student_checkpoint else None
        self._lock = threading.Lock()  # engine modules and counters are shared: one computes at a time
        warm = np.zeros((64, 96, 3), np.uint8)
        warm[16:48, 24:72] = 200
        self.engine.predict(
            self.engine.embed([warm])[0], [Prompt(points=np.array([[48.0, 32.0]]), labels=np.array([1]))]
        )
        self.ready = True

    def __is_ready__(self) -> bool:
        return self.ready

    # -- helpers --------------------------------------------------------------------------------
    def _read(self, image: Path | None, field: str = "image") -> np.ndarray:
        if image is None:
            raise InvalidArgument(f"{field}: required")
        try:
            return read_image(image, max_pixels=self.max_pixels, name=field)
        except ValueError as exc:
            raise _bad(exc) from exc

    def _prompts(self, prompts: list[PromptIn], image_id: str) -> list[Prompt]:
        if len(prompts) > self.config.max_prompts:
            raise InvalidArgument(
                f"prompts: {len(prompts)} prompts exceed the limit of {self.config.max_prompts}"
            )
        out = []
        for i, p in enumerate(prompts):
            mask_logits = None
            if p.mask_input_id is not None:
                stored = self.logits.get(p.mask_input_id)
                if stored is None:
                    raise NotFound(f"prompts[{i}].mask_input_id {p.mask_input_id!r} is unknown or expired")
                if stored[0] != image_id:
                    raise InvalidArgument(f"prompts[{i}].mask_input_id belongs to another image")
                mask_logits = stored[1]
            try:
                out.append(
                    Prompt(
                        points=None if p.points is None else np.asarray(p.points, np.float64).reshape(-1, 2),
                        labels=None if p.labels is None else np.asarray(p.labels),
                        box=None if p.box is None else np.asarray(p.box, np.float64),
                        mask_logits=mask_logits,
                    )
                )
            except (ValueError, TypeError) as exc:
                raise InvalidArgument(f"prompts[{i}]: {exc}") from exc
        return out

    # -- routes ---------------------------------------------------------------------------------
    @bentoml.api(route="/embed")
    def embed(self, image: ImageFile) -> dict:
        """Embed an image once; later /predict calls may send its image_id instead of the pixels."""
        pixels = self._read(image)
        with self._lock:
            hits = self.engine.stats.cache_hits
            try:
                handle = self.engine.embed([pixels])[0]
            except ValueError as exc:
                raise _bad(exc) from exc
            cached = self.engine.stats.cache_hits > hits
        h, w = handle.original_size
        return {
            "image_id": handle.key,
            "width": w,
            "height": h,
            "cached": cached,
            "backend": self.engine.name,
        }

    @bentoml.api(route="/predict")
    def predict(
        self,
        prompts: list[PromptIn],
        image: list[Path] = OPTIONAL_FILE,
        image_id: str | None = None,
        multimask: bool = True,
        mask_format: Literal[MASK_FORMATS] = "rle",  # type: ignore[valid-type]
    ) -> dict:
        """Masks for each prompt: 3 candidates (1 without multimask) with IoU and stability scores."""
        if bool(image) == (image_id is not None):
            raise InvalidArgument("send exactly one of image (a file) or image_id (from /embed)")
        pixels = self._read(image[0]) if image else None
        with self._lock:
            if pixels is None:
                handle = self.engine.lookup(image_id)
                if handle is None:
                    raise NotFound(
                        f"image_id {image_id!r} is unknown or was evicted; POST the image to /embed"
                    )
            else:
                try:
                    handle = self.engine.embed([pixels])[0]
                except ValueError as exc:
                    raise _bad(exc) from exc
            converted = self._prompts(prompts, handle.key)
            try:
                out = self.engine.predict(handle, converted, multimask=multimask)
            except ValueError as exc:
                raise _bad(exc) from exc
        predictions = []
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
        h, w = handle.original_size
        return {
            "image_id": handle.key,
            "width": w,
            "height": h,
            "backend": self.engine.name,
            "mask_format": mask_format,
            "predictions": predictions,
        }

    def _model_paths(self, method: str, options: dict[str, Any]) -> dict[str, Any]:
        """Model files come from the server's configuration, never from a request (a client must not
        make the server open paths of its choosing); they are filled in per method."""
        given = sorted(set(options) & set(SERVER_PATH_OPTIONS))
        if given:
            where = ", ".join(f"{k} (SESAM_{SERVER_PATH_OPTIONS[k].upper()})" for k in given)
            raise InvalidArgument(f"options: {where} is set on the server, not per request")
        c, options = self.config, dict(options)
        side = options.get("points_per_side", 16)
        if isinstance(side, int) and side * side > c.max_weak_labels:
            raise InvalidArgument(
                f"options: points_per_side {side} makes {side * side} prompts, over the limit of {c.max_weak_labels}"
            )
        if method in ("sepl", "weaksam") and c.cam_checkpoint:
            options["cam"] = c.cam_checkpoint
        if method == "weaksam" and c.wsod_checkpoint:
            options["wsod"] = c.wsod_checkpoint
            options.setdefault("scorer", "wsod")  # a configured detector is the one to use
        if method == "grounded" and c.detector:
            options["detector"] = c.detector
        return options

    @bentoml.api(route="/refine")
    def refine(
        self,
        image: ImageFile,
        weak: dict[str, Any] | None = None,
        coarse_mask: list[Path] = OPTIONAL_FILE,
        method: Literal[METHODS] = "sesam",  # type: ignore[valid-type]
        options: dict[str, Any] | None = None,
        label_format: Literal[LABEL_FORMATS] = "png",  # type: ignore[valid-type]
        num_classes: int | None = None,
    ) -> dict:
        """Weak labels -> a dense label map (255 = unlabeled), as `sesam refine` computes it."""
        pixels = self._read(image)
        h, w = pixels.shape[:2]
        try:
            data = {"version": SCHEMA_VERSION, "width": w, "height": h} | (weak or {})
            labels = WeakLabels.from_json(data, source="weak")
            if (labels.height, labels.width) != (h, w):
                raise ValueError(
                    f"weak: labels are for a {labels.width}x{labels.height} image, the image is {w}x{h}"
                )
            if coarse_mask:
                labels.coarse = read_label_png(coarse_mask[0], source="coarse_mask", expected_size=(h, w))
            count = len(labels.points) + len(labels.scribbles) + len(labels.boxes)
            if count > self.config.max_weak_labels:
                raise InvalidArgument(
                    f"weak: {count} points/scribbles/boxes exceed the limit of {self.config.max_weak_labels}"
                )
            labels.validate(num_classes, "weak" + (" / coarse_mask" if coarse_mask else ""))
            opts = backend_defaults(method, self.engine.name, self._model_paths(method, options or {}))
            with self._lock:
                labeler = build_labeler(method, self.engine, **opts)
                check_weak_kinds(labeler, labels, "weak")
                result = labeler.refine(pixels, labels)
        except (ValueError, TypeError) as exc:
            raise _bad(exc) from exc
        return {
            "method": method,
            "options": opts,
            "backend": self.engine.name,
            "width": w,
            "height": h,
            "labels": encode_labels(result.labels, label_format),
            "stats": result.stats() | {"weak_kinds": labels.kinds()},
        }

    @bentoml.api(route="/segment")
    def segment(
        self,
        images: list[Path] = Field(default_factory=list),  # noqa: B008 (BentoML reads the default)
        output: Literal[SEGMENT_OUTPUTS] = "auto",  # type: ignore[valid-type]
        label_format: Literal[LABEL_FORMATS] = "png",  # type: ignore[valid-type]
        mask_format: Literal[INSTANCE_MASK_FORMATS] = "rle",  # type: ignore[valid-type]
        min_score: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
    ) -> dict:
        """The student's answer for each image (concurrent requests are batched): a label map
        (semantic student) or instances with mask, class, score and box (instance student)."""
        student = self.student
        if student is None:
            raise NotFound("no student configured (SESAM_STUDENT_CHECKPOINT)")
        task = student.task
        wanted = {"labels": "semantic", "instances": "instance"}.get(output, task)
        if wanted != task:
            raise InvalidArgument(
                f"output: {output!r} is not meaningful for the {task} student {student.name!r}; "
                f"send output={'labels' if task == 'semantic' else 'instances'} or auto"
            )
        if not images:
            raise InvalidArgument("images: at least one image file is required")
        if len(images) > self.config.max_images:
            raise InvalidArgument(
                f"images: {len(images)} images exceed the limit of {self.config.max_images}"
            )
        pixels = [self._read(path, f"images[{i}]") for i, path in enumerate(images)]
        try:
            if self.config.batching:
                batcher = self.student_batcher
                answers = (batcher.label_maps if task == "semantic" else batcher.instances)(pixels)
            else:
                with self._lock:
                    answers = student_answers(student, pixels)
        except ValueError as exc:
            raise _bad(exc) from exc
        results = []
        for image, answer in zip(pixels, answers, strict=True):
            h, w = image.shape[:2]
            result: dict[str, Any] = {"width": w, "height": h}
            if task == "semantic":
                result["labels"] = encode_labels(
                    np.asarray(answer, np.uint8), label_format, student.class_names
                )
            else:
                kept = [item for item in answer if item["score"] >= min_score]
                if mask_format != "rle":
                    masks = decode_instances(kept, h, w, "rle")
                    kept = [item | {"mask": encode_mask(m, mask_format)} for item, m in zip(kept, masks)]
                result["instances"] = kept
            results.append(result)
        return {
            "student": student.name,
            "task": task,
            "runtime": student.runtime,
            "class_names": student.class_names,
            "format": label_format if task == "semantic" else mask_format,
            "results": results,
        }

    @bentoml.api(route="/info")
    def info(self) -> dict:
        """Backend, limits, cache and counter state."""
        with self._lock:
            engine = self.engine.info()
        return engine | {
            "limits": {
                "max_prompts": self.config.max_prompts,
                "max_weak_labels": self.config.max_weak_labels,
                "max_image_pixels": self.max_pixels,
                "max_images": self.config.max_images,
                "max_body_bytes": self.config.max_body_bytes,
                "request_timeout_s": self.config.request_timeout_s,
            },
            "logits_cache": self.logits.info(),
            "student": self.student.info() if self.student else None,
            "batching": {
                "enabled": self.config.batching,
                "max_batch_size": self.config.max_batch_size,
                "max_latency_ms": self.config.max_latency_ms,
            },
            "auth": self.config.api_key is not None,
            "refine_methods": list(METHODS),
            "tags_models": {
                "cam_checkpoint": self.config.cam_checkpoint,
                "wsod_checkpoint": self.config.wsod_checkpoint,
                "detector": self.config.detector,
            },
        }


SegmentationService.add_asgi_middleware(
    GuardMiddleware, api_key=CONFIG.api_key, max_body_bytes=CONFIG.max_body_bytes
)
