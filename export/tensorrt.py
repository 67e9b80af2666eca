"""TensorRT engines built from an export directory with the TensorRT Python API.

`build_engines(DIR, fp16=...)` parses each ONNX file and builds a serialized engine with one
optimization profile per model: encoder batch 1..8; decoder prompts 1..256 and points up to the
export's point limit + 3 (a box's corners and SAM 2's padding point); students batch 1..8 and
32..2048 pixels a side. Under fp16, normalisation, softmax and reduction
layers (LayerNorm, SAM's LayerNorm2d, attention softmax) stay in fp32, the usual cause of fp16 SAM
engines that drift. Engine files are named by model, GPU and TensorRT version and precision
(`encoder.NVIDIA_H100_80GB_HBM3.trt10.5.0.fp16.plan`): an engine only runs on the GPU model and
TensorRT version that built it. They are registered in metadata.json under "tensorrt".

Without TensorRT or CUDA every entry point raises `TensorRTUnavailable` with what to install.
The pure parts (profiles, names, precision choice) are tested here; building and running are
tested by `gpu`-marked tests where the hardware exists.
"""

from __future__ import annotations

from pathlib import Path

from export.onnx_export import MAX_POINTS, model_roles, write_metadata
from models.runtime.onnx_runtime import model_file, read_metadata
from models.runtime.tensorrt_runtime import engine_filename, require_tensorrt

ENCODER_BATCH = (1, 4, 8)
DECODER_PROMPTS = (1, 64, 256)
# point slots of a decoder call (min, opt); the max is the export's point limit plus the tokens a
# prompt adds to its clicks: SAM 2's two box corners and its padding point (SAM 1: box corners)
DECODER_POINTS = (1, 4)
PROMPT_EXTRA_TOKENS = 3
STUDENT_BATCH = (1, 4, 8)
STUDENT_SIDE = (32, 512, 2048)
# orig_im_size is a shape input of the decoder (the output size depends on its values)
IMAGE_SIDE = (1, 1024, 4096)
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
FP32_UNARY_OPS = ("SQRT", "EXP", "LOG", "RECIP")
WORKSPACE_BYTES = 4 << 30


def profile_shapes(
    role: str, metadata: dict | None = None
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape per execution input of a model role (`metadata`: of its export
    directory; instance students run on their fixed square canvas, batch 1..8)."""
    if role.startswith("encoder"):
        side = int((metadata or {}).get("image_size", 1024))  # 512 for the light SAM
        return {"images": tuple((b, 3, side, side) for b in ENCODER_BATCH)}
    if role.startswith("decoder"):
        # SAM 2's decoder also takes the image's high-res maps, of fixed shapes
        maps = (metadata or {}).get("encoder_outputs", {"image_embeddings": [256, 64, 64]})
        limit = int((metadata or {}).get("limits", {}).get("points", MAX_POINTS))
        points = (*DECODER_POINTS, limit + PROMPT_EXTRA_TOKENS)  # every prompt the service accepts
        return {name: ((1, *shape),) * 3 for name, shape in maps.items()} | {
            "point_coords": tuple((b, n, 2) for b, n in zip(DECODER_PROMPTS, points, strict=True)),
            "point_labels": tuple((b, n) for b, n in zip(DECODER_PROMPTS, points, strict=True)),
            "mask_input": tuple((b, 1, 256, 256) for b in DECODER_PROMPTS),
            "has_mask_input": tuple((b,) for b in DECODER_PROMPTS),
            "orig_im_size": ((2,),) * 3,
        }
    if role == "student" and metadata is not None and metadata.get("kind") == "instance_student":
        side = int(metadata["input_side"])
        return {"images": tuple((b, 3, side, side) for b in STUDENT_BATCH)}
    if role == "student":
        return {"images": tuple((b, 3, s, s) for b, s in zip(STUDENT_BATCH, STUDENT_SIDE, strict=True))}
    raise ValueError(f"no TensorRT profile for model role {role!r}")


def shape_input_values(role: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) VALUES of shape-tensor inputs: the decoder's orig_im_size."""
    if role.startswith("decoder"):
        return {"orig_im_size": tuple((s, s) for s in IMAGE_SIDE)}
    return {}


def keep_fp32(layer_type: str, unary_op: str | None = None) -> bool:
    """Whether a layer stays fp32 in an fp16 engine (type names as in trt.LayerType)."""
    if layer_type in FP32_LAYER_TYPES:
        return True
    return layer_type == "UNARY" and unary_op in FP32_UNARY_OPS


def _build_one(
    trt, onnx_path: Path, role: str, fp16: bool, workspace: int, metadata: dict | None = None
) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    shapes, values = profile_shapes(role, metadata), shape_input_values(role)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.is_shape_tensor:
            profile.set_shape_input(tensor.name, *values[tensor.name])
        else:
            profile.set_shape(tensor.name, *shapes[tensor.name])
    config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            op = getattr(layer, "op", None) if layer.type == trt.LayerType.UNARY else None
            if keep_fp32(layer.type.name, op.name if op is not None else None):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    return bytes(plan)


def build_engines(
    directory: str | Path, fp16: bool = False, workspace: int = WORKSPACE_BYTES
) -> dict[str, str]:
    """Build one engine per ONNX model of an export directory; returns role -> engine file name."""
    trt = require_tensorrt()
    import torch

    directory = Path(directory)
    md = read_metadata(directory)
    gpu = torch.cuda.get_device_name(0)
    built = {}
    for role in model_roles(md):
        name = engine_filename(role, gpu, trt.__version__, fp16)
        plan = _build_one(trt, model_file(directory, md, role), role, fp16, workspace, md)
        tmp = directory / (name + ".tmp")
        tmp.write_bytes(plan)
        tmp.replace(directory / name)
        built[role] = name
    entry = {"gpu": gpu, "tensorrt": trt.__version__, "precision": "fp16" if fp16 else "fp32", "files": built}
    md.setdefault("tensorrt", []).append(entry)
    write_metadata(directory, md)
    return built
