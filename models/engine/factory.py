"""Engine configuration (YAML / environment) and the backend registry."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import env_values, from_mapping, load, lookup, read_yaml, setting
from models.engine.base import CachedSegmenter
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.regions import DEFAULT_SCALES
from models.runtime.device import check_device_name, resolve_device

ENV_PREFIX = "SESAM_"


@dataclass
class EngineConfig:
    """Which backend, which model, how much cache. `auto` = SAM when a checkpoint is set, else classical."""

    backend: str = setting(
        "auto",
        help="`auto` (with a checkpoint or random weights the SAM backend of its sam_type, else onnx with an "
        "export dir, else classical), or one of classical, classical-regions, torch (SAM 1), sam2 (SAM 2.1), "
        "light (EfficientViT-SAM), onnx, tensorrt, triton",
    )
    sam_type: str = setting(
        "vit_b",
        help="SAM 1: vit_b, vit_l, vit_h (official), or tiny (random seeded weights, tests); SAM 2.1 "
        "(backend sam2): sam2.1_hiera_t, sam2.1_hiera_s, sam2.1_hiera_b+, sam2.1_hiera_l; light SAM "
        "(backend light): efficientvit-sam-l0, -l1, -l2",
    )
    sam_checkpoint: str | None = setting(
        None,
        help="path to an official checkpoint: SAM 1 (torch backend), SAM 2.1 (sam2) or EfficientViT-SAM "
        "(light); any other backend refuses it",
    )
    sam_checkpoint_sha256: str | None = setting(
        None,
        help="sam2: the checkpoint file's expected sha256, checked before loading (SAM 1 files are checked by "
        "the hash prefix in their official names)",
    )
    random_weights: int | None = setting(
        None,
        help="sam2, light: build with random weights from this seed instead of a checkpoint (tests and "
        "speed benchmarks only: its masks mean nothing); any other backend refuses it",
    )
    device: str = setting(
        "cpu",
        help="torch: where SAM runs and its embeddings are cached; auto (CUDA when present), cpu, cuda or "
        "cuda:N (training sets it to its own `device` unless the engine names one)",
    )
    cache_bytes: int = setting(DEFAULT_CACHE_BYTES, help="embedding cache budget in bytes (LRU)")
    cache_dtype: str = setting(
        "float32",
        help="torch, sam2, light: dtype of the cached image state; float16 or bfloat16 halve the bytes per "
        "image (the decoder still runs in float32; masks then differ from float32's on a few boundary pixels)",
    )
    max_prompts: int | None = setting(None, help="prompts per predict call (none: unbounded)", env=False)
    export_dir: str | None = setting(
        None, help="an export directory (`sesam export sam`) for the onnx / tensorrt / triton backends"
    )
    providers: str | None = setting(
        None, help="onnx: execution providers, comma-separated (none: the best available)"
    )
    threads: int | None = setting(None, help="onnx: intra-op threads (none: onnxruntime's choice)")
    triton_url: str | None = setting(None, help="triton: the server's HTTP host:port")
    working_side: int | None = setting(
        None,
        help="images with a longer side are reduced to it before encoding (prompts mapped, masks answered "
        "at the image's size, nearest); none: 1024 (SAM's own input side; the classical priors' by "
        "measurement); 0: never reduce",
    )
    classical: dict[str, Any] = setting(
        {},
        help="classical: options of the prior (see the Classical prior table), e.g. "
        "`--set engine.classical.scale=40`",
        env=False,
    )
    classical_scales: str | None = setting(
        None,
        help=f"classical-regions (the previous prior): Felzenszwalb scales fine,medium,coarse (YAML: a list; none: "
        f"{','.join(str(s) for s in DEFAULT_SCALES)}, chosen on CamVid train); smaller gives smaller regions",
    )

    def resolved_backend(self) -> str:
        """auto: with a checkpoint or random weights, the backend of its `sam_type` (torch, sam2 or
        light: `sam_types`), else ONNX with an export directory, else the classical prior."""
        if self.backend != "auto":
            return self.backend
        if self.sam_checkpoint or self.random_weights is not None:
            return sam_types().get(self.sam_type, "torch")
        return "onnx" if self.export_dir else "classical"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> EngineConfig:
        return from_mapping(cls, values, source)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None
    ) -> EngineConfig:
        """Read SESAM_BACKEND, SESAM_SAM_TYPE, SESAM_SAM_CHECKPOINT, SESAM_DEVICE, SESAM_CACHE_BYTES, ...;
        `flags` (command-line values, None: not given) override them, validated once with them (a flag
        may mend what the environment alone would not pass, e.g. SESAM_BACKEND=sam2 with --sam-type)."""
        if flags is None:
            return load(cls, prefix=ENV_PREFIX, env=env, source="environment")
        given = {k: v for k, v in flags.items() if v is not None}
        return from_mapping(cls, env_values(cls, ENV_PREFIX, env) | given, "environment + command line")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EngineConfig:
        """The `engine:` section of a YAML file (or the whole file when it has none)."""
        data = read_yaml(path)
        return from_mapping(cls, data.get("engine", data), source=str(path))

    def validate(self, source: str = "config") -> None:
        if self.backend != "auto":
            try:
                lookup(ENGINE_BACKENDS, self.backend, "backend")
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}, or auto") from None
        backend = self.resolved_backend()
        types = sam_types() if backend in SAM_BACKENDS else {}
        if types and types.get(self.sam_type) != backend:
            fits = ", ".join(sorted(k for k, v in types.items() if v == backend))
            kind = f"is for backend {types[self.sam_type]}" if self.sam_type in types else "is unknown"
            raise ValueError(f"{source}: sam_type {self.sam_type!r} {kind}; backend {backend} takes {fits}")
        for field, readers in WEIGHT_FIELDS.items():
            if getattr(self, field) not in (None, "") and backend not in readers:
                raise ValueError(
                    f"{source}: backend {backend} reads no {field} (backends {', '.join(readers)} do); "
                    "drop it or pick one of those backends"
                )
        if self.sam_checkpoint and not Path(self.sam_checkpoint).is_file():
            raise ValueError(f"{source}: sam_checkpoint {self.sam_checkpoint!r} is not a file")
        if self.export_dir and not (Path(self.export_dir) / "metadata.json").is_file():
            raise ValueError(
                f"{source}: export_dir {self.export_dir!r} holds no metadata.json (make one with `sesam export sam`)"
            )
        if (self.working_side is not None and 0 < self.working_side < 16) or (self.working_side or 0) < 0:
            raise ValueError(
                f"{source}: working_side must be 0 (never reduce) or >= 16, got {self.working_side}"
            )
        if self.cache_bytes < 0:
            raise ValueError(f"{source}: cache_bytes must be >= 0, got {self.cache_bytes}")
        from models.engine.base import cache_torch_dtype

        try:
            cache_torch_dtype(self.cache_dtype)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        check_device_name(self.device, f"{source}: device")
        if self.classical_scales is not None:
            self.scales(source)
        from models.engine.classical import ClassicalOptions

        from_mapping(ClassicalOptions, self.classical, f"{source}: classical").validate(
            f"{source}: classical"
        )

    def resolved_working_side(self) -> int | None:
        """The engine's working long side: the setting, 1024 when unset, None (never reduce) for 0."""
        from models.engine.base import DEFAULT_WORKING_SIDE

        if self.working_side is None:
            return DEFAULT_WORKING_SIDE
        return self.working_side or None

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


def _build_classical(config: EngineConfig) -> CachedSegmenter:
    from models.engine.classical import ClassicalPrior

    return ClassicalPrior(
        config.classical,
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
        working_side=config.resolved_working_side(),
    )


def _build_regions(config: EngineConfig) -> CachedSegmenter:
    from models.engine.regions import RegionPrior

    scales = config.scales()
    return RegionPrior(
        **({"scales": scales} if scales else {}),
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
        working_side=config.resolved_working_side(),
    )


def _build_torch(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_torch import SamEngine

    if not config.sam_checkpoint and config.sam_type != "tiny":
        raise ValueError(
            f"backend torch with SAM {config.sam_type} needs sam_checkpoint (e.g. SESAM_SAM_CHECKPOINT="
            "/path/sam_vit_b_01ec64.pth); only the test model 'tiny' runs without one"
        )
    return SamEngine.from_checkpoint(config.sam_type, config.sam_checkpoint, **_torch_engine_kwargs(config))


def _torch_engine_kwargs(config: EngineConfig) -> dict[str, Any]:
    """What every PyTorch SAM engine takes from the config besides its model."""
    return {
        "device": resolve_device(config.device),
        "cache_bytes": config.cache_bytes,
        "max_prompts": config.max_prompts,
        "working_side": config.resolved_working_side(),
        "cache_dtype": config.cache_dtype,
    }


def _weights_or_seed(config: EngineConfig, backend: str, weights: str) -> int:
    """A checkpoint or random weights, exactly one; the seed to build with (0 with a checkpoint)."""
    if not config.sam_checkpoint and config.random_weights is None:
        raise ValueError(
            f"backend {backend} with {config.sam_type} needs sam_checkpoint ({weights}), "
            "or random_weights=SEED for tests and speed benchmarks"
        )
    if config.sam_checkpoint and config.random_weights is not None:
        raise ValueError(f"{backend}: give sam_checkpoint or random_weights, not both")
    return config.random_weights or 0


def _build_sam2(config: EngineConfig) -> CachedSegmenter:
    from models.engine.modeling.sam2_build import SAM2_CONFIGS, build_sam2_model
    from models.engine.sam2_torch import Sam2Engine

    lookup(SAM2_CONFIGS, config.sam_type, "SAM 2.1 sam_type")
    seed = _weights_or_seed(config, "sam2", "e.g. SESAM_SAM_CHECKPOINT=/path/sam2.1_hiera_tiny.pt")
    model = build_sam2_model(config.sam_type, config.sam_checkpoint, config.sam_checkpoint_sha256, seed)
    return Sam2Engine(model, name=config.sam_type, **_torch_engine_kwargs(config))


def _build_light(config: EngineConfig) -> CachedSegmenter:
    from models.engine.light_sam import LIGHT_TYPES, LightSamEngine, build_light_sam

    lookup(LIGHT_TYPES, config.sam_type, "light SAM type")
    seed = _weights_or_seed(config, "light", "EfficientViT-SAM's released weights")
    model = build_light_sam(config.sam_type, config.sam_checkpoint, random_seed=seed)
    return LightSamEngine(model, name=config.sam_type, **_torch_engine_kwargs(config))


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
        working_side=config.resolved_working_side(),
    )


def _build_tensorrt(config: EngineConfig) -> CachedSegmenter:
    from models.engine.sam_tensorrt import TensorRTSamEngine

    return TensorRTSamEngine(
        _needs_export_dir(config, "tensorrt"),
        cache_bytes=config.cache_bytes,
        max_prompts=config.max_prompts,
        working_side=config.resolved_working_side(),
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
        working_side=config.resolved_working_side(),
    )


# backend name -> builder (config) -> engine, read through `lookup`
ENGINE_BACKENDS: dict[str, Callable[[EngineConfig], CachedSegmenter]] = {
    "classical": _build_classical,
    "classical-regions": _build_regions,
    "torch": _build_torch,
    "sam2": _build_sam2,
    "light": _build_light,
    "onnx": _build_onnx,
    "tensorrt": _build_tensorrt,
    "triton": _build_triton,
}


# the backends that build a SAM from its type and checkpoint, in `sam_types` order
SAM_BACKENDS = ("torch", "sam2", "light")
# the weight settings and the backends that read them: any other backend refuses them, so a
# checkpoint given to the classical prior is an error, not a silent no-op
WEIGHT_FIELDS = {
    "sam_checkpoint": SAM_BACKENDS,
    "sam_checkpoint_sha256": ("sam2",),
    "random_weights": ("sam2", "light"),
}


@functools.cache  # the registries are fixed; validation and both CLIs ask several times
def sam_types() -> dict[str, str]:
    """Every SAM type an engine builds -> its backend: SAM 1 (`torch`, `sam_model_registry`), SAM 2.1
    (`sam2`, `SAM2_CONFIGS`) and the light SAM (`light`, `LIGHT_TYPES`); exported models name theirs."""
    from models.engine.light_sam import LIGHT_TYPES
    from models.engine.modeling.build import sam_model_registry
    from models.engine.modeling.sam2_build import SAM2_CONFIGS

    families = zip(SAM_BACKENDS, (sam_model_registry, SAM2_CONFIGS, LIGHT_TYPES), strict=True)
    return {name: backend for backend, names in families for name in names}


def build_engine(config: EngineConfig | None = None) -> CachedSegmenter:
    """The engine a config asks for (defaults: classical prior, no weights needed)."""
    config = config or EngineConfig()
    config.validate()
    return lookup(ENGINE_BACKENDS, config.resolved_backend(), "backend")(config)
