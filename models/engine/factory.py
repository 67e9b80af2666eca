"""Engine configuration (YAML / environment) and the backend registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from models.engine.base import CachedSegmenter
from models.engine.cache import DEFAULT_CACHE_BYTES

ENV_PREFIX = "SESAM_"


@dataclass
class EngineConfig:
    """Which backend, which model, how much cache. `auto` = SAM when a checkpoint is set, else classical."""

    backend: str = "auto"
    sam_type: str = "vit_b"
    sam_checkpoint: str | None = None
    device: str = "cpu"
    cache_bytes: int = DEFAULT_CACHE_BYTES
    max_prompts: int | None = None
    # exported SAM (`sesam export sam --out DIR`) for the onnx / tensorrt / triton backends
    export_dir: str | None = None
    providers: str | None = None  # onnx: comma-separated execution providers; default: best available
    threads: int | None = None  # onnx: intra-op threads; default: onnxruntime's choice
    triton_url: str | None = None  # triton: host:port of the server's HTTP endpoint
    # classical: Felzenszwalb scales "fine,medium,coarse" (smaller -> smaller, more precise regions)
    classical_scales: str | None = None

    def resolved_backend(self) -> str:
        """auto: torch SAM with a checkpoint, else ONNX with an export directory, else the classical prior."""
        if self.backend != "auto":
            return self.backend
        if self.sam_checkpoint:
            return "torch"
        return "onnx" if self.export_dir else "classical"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> EngineConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown engine settings {unknown}; known: {sorted(known)}")
        out = cls()
        for key, raw in values.items():
            setattr(out, key, _coerce(key, raw, known[key].type, source))
        out.validate(source)
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineConfig:
        """Read SESAM_BACKEND, SESAM_SAM_TYPE, SESAM_SAM_CHECKPOINT, SESAM_DEVICE, SESAM_CACHE_BYTES, ..."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if env.get(name, "") != "":
                values[f.name] = env[name]
        return cls.from_mapping(values, source="environment")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EngineConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        section = data.get("engine", data) if isinstance(data, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{path}: expected a mapping (optionally under 'engine:')")
        return cls.from_mapping(section, source=str(path))

    def validate(self, source: str = "config") -> None:
        if self.backend != "auto" and self.backend not in ENGINE_BACKENDS:
            raise ValueError(
                f"{source}: backend {self.backend!r} unknown; choose auto or one of {sorted(ENGINE_BACKENDS)}"
            )
        if self.sam_checkpoint and not Path(self.sam_checkpoint).is_file():
            raise ValueError(f"{source}: sam_checkpoint {self.sam_checkpoint!r} is not a file")
        if self.export_dir and not (Path(self.export_dir) / "metadata.json").is_file():
            raise ValueError(
                f"{source}: export_dir {self.export_dir!r} holds no metadata.json (make one with `sesam export sam`)"
            )
        if self.cache_bytes < 0:
            raise ValueError(f"{source}: cache_bytes must be >= 0, got {self.cache_bytes}")
        if self.classical_scales is not None:
            self.scales(source)

    def scales(self, source: str = "config") -> tuple[int, int, int] | None:
        """classical_scales as three increasing positive ints, None when unset."""
        if self.classical_scales is None:
            return None
        try:
            values = tuple(int(v) for v in self.classical_scales.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not 0 < values[0] < values[1] < values[2]:
            raise ValueError(
                f"{source}: classical_scales={self.classical_scales!r} must be three increasing "
                "positive integers, e.g. 60,200,600"
            )
        return values  # type: ignore[return-value]


def _coerce(key: str, raw: Any, annotation: Any, source: str) -> Any:
    text = str(annotation)
    if raw is None or raw == "":
        return None
    if isinstance(raw, (list, tuple)):  # YAML lists, e.g. classical_scales: [60, 200, 600]
        raw = ",".join(str(v) for v in raw)
    try:
        if text.startswith("int"):
            return int(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {key}={raw!r} is not a valid {text}") from exc


def _build_classical(config: EngineConfig) -> CachedSegmenter:
    from models.engine.classical import ClassicalPrior

    scales = config.scales()
    return ClassicalPrior(
        **({"scales": scales} if scales else {}),
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
    )


def _build_torch(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_torch import SamEngine

    if not config.sam_checkpoint and config.sam_type != "tiny":
        raise ValueError(
            f"backend torch with SAM {config.sam_type} needs sam_checkpoint (e.g. SESAM_SAM_CHECKPOINT="
            "/path/sam_vit_b_01ec64.pth); only the test model 'tiny' runs without one"
        )
    return SamEngine.from_checkpoint(
        config.sam_type,
        config.sam_checkpoint,
        device=config.device,
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
    )


def _needs_export_dir(config: EngineConfig, backend: str) -> str:
    if not config.export_dir:
        raise ValueError(
            f"backend {backend} needs export_dir (SESAM_EXPORT_DIR), written by `sesam export sam`"
        )
    return config.export_dir


def _build_onnx(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_onnx import OnnxSamEngine

    return OnnxSamEngine(
        _needs_export_dir(config, "onnx"),
        providers=config.providers,
        threads=config.threads,
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
    )


def _build_tensorrt(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_tensorrt import TensorRTSamEngine

    return TensorRTSamEngine(
        _needs_export_dir(config, "tensorrt"), cache_bytes=config.cache_bytes, max_prompts=config.max_prompts
    )


def _build_triton(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_triton import TritonSamEngine

    if not config.triton_url:
        raise ValueError("backend triton needs triton_url (SESAM_TRITON_URL), e.g. localhost:8000")
    return TritonSamEngine(
        _needs_export_dir(config, "triton"),
        url=config.triton_url,
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
    )


ENGINE_BACKENDS: dict[str, Callable[[EngineConfig], CachedSegmenter]] = {
    "classical": _build_classical,
    "torch": _build_torch,
    "onnx": _build_onnx,
    "tensorrt": _build_tensorrt,
    "triton": _build_triton,
}


def build_engine(config: EngineConfig | None = None) -> CachedSegmenter:
    """The engine a config asks for (defaults: classical prior, no weights needed)."""
    config = config or EngineConfig()
    config.validate()
    return ENGINE_BACKENDS[config.resolved_backend()](config)
