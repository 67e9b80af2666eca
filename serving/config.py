"""Service configuration: a YAML file (`SESAM_CONFIG`) and/or environment variables (they win).

YAML layout (every key optional)::

    engine:            # models.engine.EngineConfig: backend, sam_type, sam_checkpoint, export_dir, ...
      backend: onnx
      export_dir: exports/vit_b
    service:           # ServiceConfig below
      student_checkpoint: models/students/weights/camvid_student.pt
      max_image_pixels: 16777216
      api_key: change-me

Environment: SESAM_<ENGINE FIELD> (SESAM_BACKEND, SESAM_EXPORT_DIR, ...) and SESAM_<SERVICE FIELD>
(SESAM_STUDENT_CHECKPOINT, SESAM_STUDENT_RUNTIME, SESAM_MAX_IMAGES, SESAM_MAX_IMAGE_PIXELS, SESAM_MAX_PROMPTS (per /predict),
SESAM_MAX_WEAK_LABELS (points + scribbles + boxes per /refine), SESAM_MAX_BODY_BYTES,
SESAM_LOGITS_CACHE_BYTES, SESAM_API_KEY, SESAM_REQUEST_TIMEOUT_S, SESAM_BATCHING, ...; every one is
in docs/settings.md). SESAM_STUDENT_CHECKPOINT=none turns /segment off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from models.config import load, read_yaml, setting
from models.engine import EngineConfig
from models.engine.validation import DEFAULT_MAX_PIXELS
from models.students.semantic import SHIPPED_SEMANTIC_STUDENT

ENV_PREFIX = "SESAM_"
SHIPPED_STUDENT = SHIPPED_SEMANTIC_STUDENT


@dataclass
class ServiceConfig:
    """Limits, models and switches of the HTTP service (the engine has its own EngineConfig)."""

    engine: EngineConfig = setting(
        default_factory=EngineConfig, help="the engine settings (YAML `engine:` section)", env=False
    )
    student_checkpoint: str | None = setting(
        str(SHIPPED_STUDENT),
        help="the student behind /segment: a .pt checkpoint or an export directory (`sesam export student`); "
        "semantic or instance; `none` turns the route off",
    )
    student_runtime: str = setting(
        "auto", help="torch (a .pt), onnx or tensorrt (an export directory); auto picks by what is there"
    )
    student_providers: str | None = setting(
        None,
        help="onnx runtime: execution providers, comma-separated (default: TensorRT, CUDA, CPU as present)",
    )
    student_onnx_file: str = setting(
        "student",
        help="onnx runtime: the export's graph, `student` or `student_int8` (sesam export quantize)",
    )
    student_threads: int | None = setting(None, help="onnx runtime: intra-op threads (default: all cores)")
    cam_checkpoint: str | None = setting(
        None, help="tags (sepl, weaksam): the CAM classifier (default: the shipped CamVid one)"
    )
    wsod_checkpoint: str | None = setting(None, help="weaksam with scorer wsod: the WSOD head")
    detector: str | None = setting(
        None, help="grounded: the HF Grounding DINO / OWLv2 checkpoint folder (`box_source` picks which)"
    )
    label_studio_url: str | None = setting(
        None,
        help="Label Studio ML backend (/ls): Label Studio's address to read task images from "
        "(default: the hostname Label Studio sends to /ls/setup)",
    )
    label_studio_token: str | None = setting(
        None,
        help="Label Studio ML backend: the API token to read task images with (default: the one /ls/setup sends)",
    )
    label_studio_files: str | None = setting(
        None,
        help="Label Studio ML backend: the folder behind Label Studio's local-files storage "
        "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); `/data/local-files/?d=` images are read from it",
    )
    max_images: int = setting(16, help="images per /segment request (400 above)")
    max_image_pixels: int = setting(
        DEFAULT_MAX_PIXELS, help="decoded image size cap, checked from the header before decoding (413 above)"
    )
    max_prompts: int = setting(256, help="prompts per /predict request (400 above)")
    max_points_per_prompt: int = setting(64, help="points in one /predict prompt (400 above)")
    max_weak_labels: int = setting(
        4096, help="points + scribbles + boxes per /refine request (400 above); also caps points_per_side^2"
    )
    max_scribble_points: int = setting(
        65536, help="polyline vertices over all scribbles of one /refine request (400 above)"
    )
    max_field_bytes: int = setting(
        1024**2, help="bytes of one text field or JSON value (`weak`, `prompts`, ...; 413 above)"
    )
    max_body_bytes: int = setting(64 * 1024**2, help="request body cap, also for chunked bodies (413 above)")
    max_mask_bytes: int = setting(
        256 * 1024**2,
        help="/predict decodes prompts in chunks of at most this many bytes of full-size masks and low-res logits",
    )
    refine_side: int = setting(
        1024,
        help="/refine works at most at this long side (larger images and their weak labels are reduced, "
        "the label map is answered at the image's size)",
    )
    logits_cache_bytes: int = setting(256 * 1024**2, help="budget of the low-res logits kept for next clicks")
    api_key: str | None = setting(
        None, help="when set, every route but health / metrics needs `Authorization: Bearer <key>`"
    )
    request_timeout_s: int = setting(
        120, help="deadline of the heavy routes (/embed, /refine, /predict with a new image); 504 after it"
    )
    light_timeout_s: int = setting(
        30, help="deadline of the light routes (/predict on a cached image, /segment); 503/504 after it"
    )
    light_slots: int | None = setting(
        None, help="light requests computed at once in the front process (none: the number of cores)"
    )
    light_queue: int = setting(
        64, help="light requests waiting for a slot; one more is a 503 with Retry-After"
    )
    heavy_workers: int = setting(
        1, help="processes of the heavy lane (image encodings, /refine), each computing one request at a time"
    )
    heavy_queue: int = setting(
        4, help="heavy requests waiting per heavy worker; one more is a 503 with Retry-After"
    )
    heavy_nice: int = setting(
        10, help="CPU niceness of the heavy lane's processes, so light requests win the cores (0: equal)"
    )
    retry_after_s: int = setting(2, help="Retry-After of a 503 answer, in seconds")
    batching: bool | None = setting(
        None, help="adaptive batching of /segment: true, false or auto (on with CUDA; it does not pay on CPU)"
    )
    max_batch_size: int = setting(8, help="adaptive batching: largest batch")
    max_latency_ms: int = setting(200, help="adaptive batching: longest wait for a batch")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """YAML from SESAM_CONFIG (if set), then environment overrides; errors name the source."""
        env = os.environ if env is None else env
        path = env.get(ENV_PREFIX + "CONFIG", "")
        data = read_yaml(path, sections=("engine", "service")) if path else {}
        source = path or "service config"
        # the prompt cap is the service's (user prompts per /predict); refinement's own batches are not capped
        engine = load(
            EngineConfig,
            yaml_values=data.get("engine") or {},
            prefix=ENV_PREFIX,
            env=env,
            source=f"{source}: engine" if path else "environment",
        )
        service_values = dict(data.get("service") or {})
        config = load(cls, yaml_values=service_values, prefix=ENV_PREFIX, env=env, source=source)
        config.engine = engine
        if config.batching is None:
            config.batching = engine.device.startswith("cuda")
        return config

    def validate(self, source: str = "service config") -> None:
        if self.student_checkpoint in ("", "none", "None"):
            self.student_checkpoint = None
        for name in (
            "max_image_pixels",
            "max_prompts",
            "max_points_per_prompt",
            "max_weak_labels",
            "max_scribble_points",
            "max_field_bytes",
            "max_body_bytes",
            "max_mask_bytes",
            "refine_side",
            "request_timeout_s",
            "light_timeout_s",
            "heavy_workers",
            "max_batch_size",
            "max_images",
            "retry_after_s",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{source}: {name} must be >= 1, got {getattr(self, name)}")
        if self.light_slots is not None and self.light_slots < 1:
            raise ValueError(f"{source}: light_slots must be >= 1, got {self.light_slots}")
        if not 0 <= self.heavy_nice <= 19:
            raise ValueError(f"{source}: heavy_nice must lie in [0, 19], got {self.heavy_nice}")
        if self.label_studio_token and not self.label_studio_url:
            raise ValueError(
                f"{source}: label_studio_token needs label_studio_url (the token is only ever sent there)"
            )
        if self.label_studio_url and not self.label_studio_url.startswith(("http://", "https://")):
            raise ValueError(
                f"{source}: label_studio_url must be an http(s) URL, got {self.label_studio_url!r}"
            )
        for name in ("logits_cache_bytes", "max_latency_ms", "light_queue", "heavy_queue"):
            if getattr(self, name) < 0:
                raise ValueError(f"{source}: {name} must be >= 0, got {getattr(self, name)}")
        if self.student_checkpoint and not Path(self.student_checkpoint).exists():
            raise ValueError(
                f"{source}: student_checkpoint {self.student_checkpoint!r} is neither a file nor an export directory"
            )
        for name in ("cam_checkpoint", "wsod_checkpoint", "detector"):
            value = getattr(self, name)
            if value in ("", "none", "None"):
                setattr(self, name, None)
            elif value is not None and not Path(value).exists():
                raise ValueError(f"{source}: {name} {value!r} does not exist")
        from models.students.runtime import RUNTIMES, check_providers

        if self.student_runtime not in RUNTIMES:
            raise ValueError(f"{source}: student_runtime {self.student_runtime!r} must be one of {RUNTIMES}")
        if self.student_checkpoint:  # none: no student, nothing reads the providers
            try:
                check_providers(self.student_checkpoint, self.student_providers)
            except ValueError as exc:
                raise ValueError(f"{source}: student_providers: {exc}") from None
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError(f"{source}: api_key must be at least 8 characters")


__all__ = ["SHIPPED_STUDENT", "ServiceConfig"]
