"""Service configuration: a YAML file (`SESAM_CONFIG`) and/or environment variables (they win).

YAML layout (every key optional)::

    engine:            # models.engine.EngineConfig: backend, sam_type, sam_checkpoint, export_dir, ...
      backend: onnx
      export_dir: exports/vit_b
    service:           # ServiceConfig below
      student_checkpoint: models/weights/camvid_student.pt
      max_image_pixels: 16777216
      api_key: change-me

Environment: SESAM_<ENGINE FIELD> (SESAM_BACKEND, SESAM_EXPORT_DIR, ...) and SESAM_<SERVICE FIELD>
(SESAM_STUDENT_CHECKPOINT, SESAM_MAX_IMAGE_PIXELS, SESAM_MAX_PROMPTS (per /predict),
SESAM_MAX_WEAK_LABELS (points + scribbles + boxes per /refine), SESAM_MAX_BODY_BYTES,
SESAM_LOGITS_CACHE_BYTES, SESAM_API_KEY, SESAM_REQUEST_TIMEOUT_S, SESAM_BATCHING,
SESAM_MAX_BATCH_SIZE, SESAM_MAX_LATENCY_MS). An empty SESAM_STUDENT_CHECKPOINT=none turns /segment off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from models.engine import EngineConfig
from models.engine.validation import DEFAULT_MAX_PIXELS

ENV_PREFIX = "SESAM_"
SHIPPED_STUDENT = Path(__file__).resolve().parents[1] / "models" / "weights" / "camvid_student.pt"


@dataclass
class ServiceConfig:
    """Limits, models and switches of the HTTP service (the engine has its own EngineConfig)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    student_checkpoint: str | None = str(SHIPPED_STUDENT)
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_prompts: int = 256
    max_weak_labels: int = 4096
    max_body_bytes: int = 64 * 1024**2
    logits_cache_bytes: int = 256 * 1024**2
    api_key: str | None = None
    request_timeout_s: int = 300
    batching: bool | None = (
        None  # None = auto: on when the models run on CUDA (see README: it does not pay on CPU)
    )
    max_batch_size: int = 8
    max_latency_ms: int = 200

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """YAML from SESAM_CONFIG (if set), then environment overrides; errors name the source."""
        env = os.environ if env is None else env
        engine_values: dict[str, Any] = {}
        service_values: dict[str, Any] = {}
        path = env.get(ENV_PREFIX + "CONFIG", "")
        if path:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ValueError(f"SESAM_CONFIG={path}: cannot read ({exc})") from exc
            if not isinstance(data, dict) or set(data) - {"engine", "service"}:
                raise ValueError(f"{path}: expected a mapping with 'engine:' and/or 'service:' sections")
            engine_values.update(data.get("engine") or {})
            service_values.update(data.get("service") or {})
        # the prompt cap is the service's (user prompts per /predict); refinement's own batches are not capped
        engine_fields = {f.name for f in fields(EngineConfig)} - {"max_prompts"}
        for name in engine_fields:
            if env.get(ENV_PREFIX + name.upper(), "") != "":
                engine_values[name] = env[ENV_PREFIX + name.upper()]
        own = {f.name: f for f in fields(cls) if f.name != "engine"}
        for name in own:
            if env.get(ENV_PREFIX + name.upper(), "") != "":
                service_values[name] = env[ENV_PREFIX + name.upper()]
        unknown = sorted(set(service_values) - set(own))
        if unknown:
            raise ValueError(f"{path or 'service config'}: unknown settings {unknown}; known: {sorted(own)}")
        if "max_prompts" in engine_values:
            service_values.setdefault("max_prompts", engine_values.pop("max_prompts"))
        config = cls(engine=EngineConfig.from_mapping(engine_values, source=path or "environment"))
        for name, raw in service_values.items():
            setattr(config, name, _coerce(name, raw, own[name].type))
        if config.batching is None:
            config.batching = config.engine.device.startswith("cuda")
        if config.student_checkpoint in ("", "none", "None"):
            config.student_checkpoint = None
        config.validate()
        return config

    def validate(self) -> None:
        for name in (
            "max_image_pixels",
            "max_prompts",
            "max_body_bytes",
            "request_timeout_s",
            "max_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("logits_cache_bytes", "max_latency_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.student_checkpoint and not Path(self.student_checkpoint).is_file():
            raise ValueError(f"student_checkpoint {self.student_checkpoint!r} is not a file")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("api_key must be at least 8 characters")


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    text = str(kind)
    try:
        if "bool" in text:
            if isinstance(raw, bool) or raw is None:
                return raw
            value = str(raw).strip().lower()
            if value == "auto" and "None" in text:
                return None
            if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return value in ("1", "true", "yes", "on")
        if "int" in text:
            return int(raw)
        return None if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} = {raw!r} is not a valid {text}") from exc
