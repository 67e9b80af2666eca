"""SAM and students to ONNX with torch.export (dynamo), opset 18, dynamic shapes, and a metadata.json.

An export directory holds the ONNX files and `metadata.json`: what was exported (SAM type or
student name), the preprocessing a runtime must apply (input size, normalisation, padding value),
the files' sha256, the source checkpoint's sha256 and the versions of the tools. Runtimes
(`models.engine.sam_onnx`, `models.students.onnx_student`, TensorRT, Triton) read only this directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import Tensor, nn

from export.sam2_modules import Sam2DecoderOnnx, Sam2EncoderOnnx
from export.sam_modules import (
    InstanceStudentOnnx,
    SamDecoderOnnx,
    SamEncoderOnnx,
    SamManyPromptDecoderOnnx,
    StudentOnnx,
)
from models.config import lookup
from models.engine.modeling.build import build_sam, sha256_of
from models.io import atomic_write
from models.runtime.deps import require
from models.runtime.onnx_runtime import EXPORT_FORMAT, EXPORT_KINDS
from models.students.semantic import IMAGE_MEAN, IMAGE_STD, STRIDE, load_student

OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 31  # protobuf's 2 GB limit: larger models keep weights in a .data file
MAX_ENCODER_BATCH = 64
MAX_PROMPTS = 4096
MAX_POINTS = 64

ENCODER_INPUTS = ["images"]
ENCODER_OUTPUTS = ["image_embeddings"]
# SAM 2.1: the encoder also gives the two high-res maps, and the decoder takes them
SAM2_ENCODER_OUTPUTS = ["image_embeddings", "high_res_0", "high_res_1"]
# how a runtime prepares an image for the encoder, recorded in metadata.json ("preprocess")
LONGEST_SIDE = {
    "resize": "longest_side",
    "detail": "long side resized to image_size (ResizeLongestSide, PIL bilinear), (pixel - mean) / std "
    "in 0..255 units, zero-padded bottom and right to image_size x image_size",
    "input_range": 255,
}
STRETCH = {
    "resize": "stretch",
    "detail": "pixels / 255, stretched to image_size x image_size (bilinear, antialiased: torchvision "
    "resize of a float tensor), (pixel - mean) / std in 0..1 units, no padding",
    "input_range": 1,
}
DECODER_INPUTS = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
DECODER_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
SAM2_DECODER_INPUTS = ["image_embeddings", "high_res_0", "high_res_1", *DECODER_INPUTS[1:]]
# the many-prompt decoder (no mask inputs): ONNX Runtime picks it when no prompt of a call has one
MANY_DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "orig_im_size"]
STUDENT_INPUTS = ["images"]
STUDENT_OUTPUTS = ["logits"]
INSTANCE_OUTPUTS = ["class_logits", "mask_logits"]
MAX_STUDENT_BATCH = 256


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in (
        "torch",
        "onnx",
        "onnxscript",
        "segment-anything",
        "segmentation-models-pytorch",
        "sesam",
    ):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def _parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


_ON_GRAPH: ContextVar[Callable[[str], Any] | None] = ContextVar("on_graph", default=None)


@contextlib.contextmanager
def graph_progress(callback: Callable[[str], Any]) -> Iterator[None]:
    """Within it, every ONNX graph an export writes calls `callback(file name)` once written (the
    CLI's progress bar: a SAM export writes three to five graphs, minutes each for the large types)."""
    token = _ON_GRAPH.set(callback)
    try:
        yield
    finally:
        _ON_GRAPH.reset(token)


def _onnx_export(
    module: nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, Any],
    quiet: bool = True,
) -> None:
    """torch.export-based ONNX export, written atomically (and its .data file when > 2 GB)."""
    for package in ("onnx", "onnxscript"):  # torch's exporter imports them lazily; name the extra
        require(package, "export", "ONNX export (sesam export)")
    path.parent.mkdir(parents=True, exist_ok=True)
    external = _parameter_bytes(module) >= EXTERNAL_DATA_BYTES
    tmp = path.with_name(path.name + ".tmp.onnx")
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext(),
        torch.no_grad(),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=external,
            verbose=False,
        )
        program.save(str(tmp), external_data=external)
    if external:  # the sidecar is named after the temporary file: rename it and repoint the graph
        import onnx

        model = onnx.load(str(tmp), load_external_data=True)
        Path(str(tmp) + ".data").unlink(missing_ok=True)
        onnx.save_model(
            model,
            str(tmp),
            save_as_external_data=True,
            location=path.name + ".data",
            all_tensors_to_one_file=True,
        )
    tmp.replace(path)
    callback = _ON_GRAPH.get()
    if callback is not None:
        callback(path.name)


def begin_export(out: Path) -> None:
    """Before the first graph is written: an earlier export's metadata.json goes first, so that an
    export stopped midway leaves a directory no loader takes for complete (its graphs would be a mix
    of the old export's and the new one's)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").unlink(missing_ok=True)


def _file_entry(path: Path) -> dict[str, Any]:
    entry = {"path": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
    data = path.with_name(path.name + ".data")
    if data.exists():
        entry["external_data"] = data.name
    return entry


def model_roles(metadata: Mapping[str, Any]) -> list[str]:
    """The ONNX graphs of an export that TensorRT engines and Triton models are built from, by role
    (keys of its `files`): its kind's roles in `EXPORT_KINDS`."""
    roles = lookup(EXPORT_KINDS, metadata["kind"], "export kind").roles
    return [r for r in roles if r in metadata["files"]]


def write_metadata(out: Path, metadata: dict[str, Any]) -> Path:
    path = out / "metadata.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=1)))
    return path


def sam_sides(sam: nn.Module) -> tuple[int, int]:
    """(encoder input side, prompt frame side) of a SAM 1 architecture: both 1024 for SAM, 512 and
    1024 for EfficientViT-SAM (`image_size` = (prompt side, encoder side))."""
    side = getattr(sam.image_encoder, "img_size", None)
    if side is not None:
        return int(side), int(side)
    prompt, encoder = (int(v) for v in sam.image_size)
    return encoder, prompt


def _pixel_stats(sam: nn.Module) -> tuple[list[float], list[float]]:
    if hasattr(sam, "pixel_mean"):
        return [float(v) for v in sam.pixel_mean.flatten()], [float(v) for v in sam.pixel_std.flatten()]
    from models.engine.light_sam import PIXEL_MEAN, PIXEL_STD

    return list(PIXEL_MEAN), list(PIXEL_STD)


def _prompt_example(with_mask: bool = True) -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    """The decoders' example prompt inputs (2 prompts of 2 points, a 480x640 image) after the image
    features, and their dynamic axes: prompts and points (and mask inputs: prompts)."""
    prompts = torch.export.Dim("prompts", min=1, max=MAX_PROMPTS)
    points = torch.export.Dim("points", min=1, max=MAX_POINTS)
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]]).repeat(2, 1, 1)
    labels = torch.tensor([[1.0, -1.0]]).repeat(2, 1)
    size = torch.tensor([480, 640], dtype=torch.int64)
    dims: dict[str, Any] = {"point_coords": {0: prompts, 1: points}, "point_labels": {0: prompts, 1: points}}
    if not with_mask:
        return (coords, labels, size), dims | {"orig_im_size": None}
    masks = (torch.zeros(2, 1, 256, 256), torch.zeros(2))
    dims |= {"mask_input": {0: prompts}, "has_mask_input": {0: prompts}, "orig_im_size": None}
    return (coords, labels, *masks, size), dims


def _export_encoder_and_decoders(
    out: Path,
    encoder: nn.Module,
    side: int,
    encoder_outputs: list[str],
    decoder: Callable[[bool], nn.Module],
    decoder_inputs: list[str],
    quiet: bool,
) -> tuple[Tensor, ...]:
    """encoder.onnx (dynamic batch) and decoder.onnx / decoder_single.onnx (`decoder(multimask)`:
    dynamic prompts and points, mask input) of any SAM family; returns the encoder's outputs on one
    blank image, the image features the decoders were exported with."""
    batch = torch.export.Dim("batch", min=1, max=MAX_ENCODER_BATCH)
    # batch 2: torch.export specialises dimensions whose example size is 0 or 1
    images = torch.zeros(2, 3, side, side)
    _onnx_export(
        encoder,
        (images,),
        out / "encoder.onnx",
        ENCODER_INPUTS,
        encoder_outputs,
        {"images": {0: batch}},
        quiet,
    )
    with torch.no_grad():
        features = encoder(images[:1])
    features = features if isinstance(features, tuple) else (features,)
    prompt, dims = _prompt_example()
    dynamic = dict.fromkeys(encoder_outputs) | dims
    for name, multimask in (("decoder.onnx", True), ("decoder_single.onnx", False)):
        _onnx_export(
            decoder(multimask),
            (*features, *prompt),
            out / name,
            decoder_inputs,
            DECODER_OUTPUTS,
            dynamic,
            quiet,
        )
    return features


def _sam_metadata(
    out: Path,
    kind: str,
    sam_type: str,
    fields: dict[str, Any],
    checkpoint: str | Path | None,
    random_seed: int | None,
    extra_files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metadata.json of a SAM-family export: the common fields around `fields` (sizes,
    preprocessing, ...), the three graphs (and `extra_files`); written, and returned."""
    files = {role: _file_entry(out / f"{role}.onnx") for role in ("encoder", "decoder", "decoder_single")}
    metadata = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "sam_type": sam_type,
        **fields,
        "opset": OPSET,
        "limits": {"encoder_batch": MAX_ENCODER_BATCH, "prompts": MAX_PROMPTS, "points": MAX_POINTS},
        "files": files | (extra_files or {}),
        "source": _source(checkpoint, random_seed),
        "versions": versions(),
    }
    write_metadata(out, metadata)
    return metadata


def export_sam(
    sam: nn.Module,
    out: str | Path,
    sam_type: str,
    checkpoint: str | Path | None = None,
    quiet: bool = True,
    random_seed: int | None = None,
) -> dict[str, Any]:
    """A SAM 1 architecture (SAM, or EfficientViT-SAM: its 512 encoder input kept apart from the
    1024 prompt frame): write encoder.onnx, decoder.onnx (3 masks), decoder_single.onnx (1 mask),
    their many-prompt forms for calls without mask inputs (decoder_many.onnx,
    decoder_many_single.onnx) and metadata.json (kind `sam`)."""
    out = Path(out)
    begin_export(out)
    sam = sam.eval()
    size, prompt_side = sam_sides(sam)
    (embedding,) = _export_encoder_and_decoders(
        out,
        SamEncoderOnnx(sam),
        size,
        ENCODER_OUTPUTS,
        lambda multimask: SamDecoderOnnx(sam, multimask, prompt_side),
        DECODER_INPUTS,
        quiet,
    )
    many = export_many_prompt_decoders(sam, out, quiet, embedding)
    mean, std = _pixel_stats(sam)
    fields = {
        "image_size": size,
        "prompt_size": prompt_side,
        "preprocess": LONGEST_SIDE,
        "low_res_size": int(sam.prompt_encoder.mask_input_size[0]),
        "embedding_shape": list(embedding.shape[1:]),
        "pixel_mean": mean,
        "pixel_std": std,
        "mask_threshold": float(sam.mask_threshold),
    }
    return _sam_metadata(out, "sam", sam_type, fields, checkpoint, random_seed, many)


def export_sam2(
    model: nn.Module,
    out: str | Path,
    sam_type: str,
    checkpoint: str | Path | None = None,
    quiet: bool = True,
    random_seed: int | None = None,
) -> dict[str, Any]:
    """A SAM 2.1 image model: write encoder.onnx (image -> embedding and both high-res maps, dynamic
    batch), decoder.onnx (3 masks), decoder_single.onnx (1 mask, with SAM 2's stability fallback),
    both with dynamic prompts and points and a mask input, and metadata.json (kind `sam2`)."""
    from models.engine.sam2_torch import IMAGENET_MEAN, IMAGENET_STD

    out = Path(out)
    begin_export(out)
    model = model.eval()
    size = int(model.image_size)
    features = _export_encoder_and_decoders(
        out,
        Sam2EncoderOnnx(model),
        size,
        SAM2_ENCODER_OUTPUTS,
        lambda multimask: Sam2DecoderOnnx(model, multimask),
        SAM2_DECODER_INPUTS,
        quiet,
    )
    fields = {
        "image_size": size,
        "prompt_size": size,
        "preprocess": STRETCH,
        "prompt_layout": "box corners first (labels 2, 3), then clicks, then one padding point (0, 0) labelled -1",
        "low_res_size": int(model.sam_prompt_encoder.mask_input_size[0]),
        "low_res_frame": "the image stretched to low_res_size x low_res_size (SAM 2's own frame)",
        "embedding_shape": list(features[0].shape[1:]),
        "encoder_outputs": {
            name: list(f.shape[1:]) for name, f in zip(SAM2_ENCODER_OUTPUTS, features, strict=True)
        },
        "pixel_mean": list(IMAGENET_MEAN),
        "pixel_std": list(IMAGENET_STD),
        "mask_threshold": 0.0,
    }
    return _sam_metadata(out, "sam2", sam_type, fields, checkpoint, random_seed)


def export_many_prompt_decoders(
    sam: nn.Module, out: str | Path, quiet: bool = True, embedding: Tensor | None = None
) -> dict[str, Any]:
    """Write decoder_many.onnx (3 masks) and decoder_many_single.onnx (1 mask), the many-prompt
    formulation for calls without mask inputs; returns their `files` entries (role -> entry).
    `embedding`: an example 1x256x64x64 embedding already computed (else one blank image is encoded)."""
    out = Path(out)
    sam = sam.eval()
    size, prompt_side = sam_sides(sam)
    if embedding is None:
        with torch.no_grad():
            embedding = sam.image_encoder(torch.zeros(1, 3, size, size))
    prompt, dims = _prompt_example(with_mask=False)
    dynamic = {"image_embeddings": None} | dims
    entries = {}
    for role, multimask in (("decoder_many", True), ("decoder_many_single", False)):
        path = out / f"{role}.onnx"
        _onnx_export(
            SamManyPromptDecoderOnnx(sam, multimask, prompt_side),
            (embedding, *prompt),
            path,
            MANY_DECODER_INPUTS,
            DECODER_OUTPUTS,
            dynamic,
            quiet,
        )
        entries[role] = _file_entry(path)
    return entries


def _source(checkpoint: str | Path | None, random_seed: int | None = None) -> dict[str, Any]:
    if checkpoint is None:
        return {
            "checkpoint": None,
            "random_seed": random_seed,
            "note": "random weights, for tests and benchmarks",
        }
    path = Path(checkpoint).resolve()
    return {"checkpoint": str(path), "checkpoint_sha256": sha256_of(path)}


def sam_family(sam_type: str) -> str:
    """The family of a SAM type: `sam` (SAM 1, `sam_model_registry`), `sam2` (SAM 2.1) or `light`
    (EfficientViT-SAM); a ValueError names the known types otherwise."""
    from models.engine.factory import sam_types

    backend = sam_types().get(sam_type)
    if backend is None:
        raise ValueError(f"unknown SAM type {sam_type!r}; known: {', '.join(sorted(sam_types()))}")
    return "sam" if backend == "torch" else backend


def build_family_model(sam_type: str, checkpoint: str | Path | None, seed: int = 0) -> nn.Module:
    """Any SAM family's model in eval mode: from `checkpoint`, else seeded random weights."""
    family = sam_family(sam_type)
    if family == "sam2":
        from models.engine.modeling.sam2_build import build_sam2_model

        return build_sam2_model(sam_type, checkpoint, random_seed=seed)
    if family == "light":
        from models.engine.light_sam import build_light_sam

        return build_light_sam(sam_type, checkpoint, random_seed=seed)
    return build_sam(sam_type, checkpoint) if checkpoint else build_seeded_sam(sam_type, seed)


def build_seeded_sam(sam_type: str, seed: int) -> Sam:
    """SAM `sam_type` with random weights drawn from `seed` (the same every time)."""
    if sam_type == "tiny":
        return build_sam("tiny", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam(sam_type, None)


def export_sam_checkpoint(
    sam_type: str,
    checkpoint: str | Path | None,
    out: str | Path,
    random_seed: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Build SAM `sam_type` from `checkpoint` and export it. Without a checkpoint only `tiny` (seeded)
    or an explicit `random_seed` (random weights: for verification and speed benchmarks) are allowed."""
    family = sam_family(sam_type)
    seed = None
    if checkpoint is None:
        if sam_type != "tiny" and random_seed is None:
            raise ValueError(
                f"SAM {sam_type} needs --checkpoint (e.g. sam_vit_b_01ec64.pth); random weights only with --random-weights SEED"
            )
        seed = 0 if random_seed is None else random_seed
    model = build_family_model(sam_type, checkpoint, seed or 0)
    if family == "sam2":
        return export_sam2(model, out, sam_type, checkpoint, quiet, random_seed=seed)
    return export_sam(model, out, sam_type, checkpoint, quiet, random_seed=seed)


def _export_student_graph(
    wrapper: StudentOnnx,
    example: torch.Tensor,
    dynamic: dict[int, Any],
    outputs: list[str],
    out: Path,
    info: dict[str, Any],
    checkpoint: str | Path | None,
    quiet: bool,
    kind: str,
    trained_keys: tuple[str, ...],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """student.onnx of any student wrapper and its metadata.json (the common fields, then `fields`)."""
    begin_export(out)
    _onnx_export(
        wrapper, (example,), out / "student.onnx", STUDENT_INPUTS, outputs, {"images": dynamic}, quiet
    )
    metadata = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "student": info["name"],
        "num_classes": int(info["num_classes"]),
        "class_names": info.get("class_names"),
        **fields,
        "pad_value": wrapper.pad_value(),
        "opset": OPSET,
        "files": {"student": _file_entry(out / "student.onnx")},
        "source": _source(checkpoint),
        "trained": {k: info[k] for k in trained_keys if k in info},
        "versions": versions(),
    }
    write_metadata(out, metadata)
    return metadata


def export_student_module(
    student: nn.Module,
    out: str | Path,
    info: dict[str, Any],
    checkpoint: str | Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write student.onnx (dynamic batch, height, width in multiples of the stride) and metadata.json."""
    batch = torch.export.Dim("batch", min=1, max=MAX_STUDENT_BATCH)
    height = STRIDE * torch.export.Dim("height_blocks", min=1, max=256)
    width = STRIDE * torch.export.Dim("width_blocks", min=1, max=256)
    fields = {
        "stride": STRIDE,
        "input": "Bx3xHxW float RGB in [0, 255]; H, W multiples of stride; pad with pad_value",
        "base_scale": info.get("base_scale", 1.0),
    }
    return _export_student_graph(
        StudentOnnx(student.eval(), IMAGE_MEAN, IMAGE_STD),
        torch.full((2, 3, 3 * STRIDE, 5 * STRIDE), 128.0),
        {0: batch, 2: height, 3: width},
        STUDENT_OUTPUTS,
        Path(out),
        info,
        checkpoint,
        quiet,
        "student",
        ("mode", "kind", "iterations", "val_miou"),
        fields,
    )


def export_instance_student_module(
    student: nn.Module,
    out: str | Path,
    info: dict[str, Any],
    checkpoint: str | Path | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write student.onnx of an instance (WISH / Mask2Former) student and metadata.json.

    Batch is dynamic; height and width are the square training canvas (`input_side`), fixed: HF's
    Mask2Former builds the deformable attention's spatial shapes with `torch.as_tensor` from Python
    ints, which torch.export records as constants, so a graph exported at one size gives wrong
    logits at another (docs/export.md has the measurement). `InstanceSegmenter` letterboxes every
    image onto that canvas anyway, as training does."""
    side = int(info.get("input_side", 320))
    fields = {
        "category_ids": info.get("category_ids"),
        "input_side": side,
        "input": "Bx3xSxS float RGB in [0, 255], the image letterboxed (longer side S), padded with pad_value",
        "outputs": "class_logits BxQx(C+1) (last = no object), mask_logits BxQx(S/4)x(S/4)",
    }
    return _export_student_graph(
        InstanceStudentOnnx(student.eval(), IMAGE_MEAN, IMAGE_STD),
        torch.full((2, 3, side, side), 128.0),
        {0: torch.export.Dim("batch", min=1, max=MAX_STUDENT_BATCH)},
        INSTANCE_OUTPUTS,
        Path(out),
        info,
        checkpoint,
        quiet,
        "instance_student",
        ("mode", "labels", "iterations", "val_ap", "val_ap50"),
        fields,
    )


def export_student_checkpoint(checkpoint: str | Path, out: str | Path, quiet: bool = True) -> dict[str, Any]:
    """A semantic or instance student checkpoint to ONNX (the checkpoint says which)."""
    from models.students.instance import load_instance_student
    from models.students.runtime import checkpoint_task

    if checkpoint_task(checkpoint) == "instance":
        model, info = load_instance_student(checkpoint)
        return export_instance_student_module(model, out, info, checkpoint, quiet)
    model, info = load_student(checkpoint)
    return export_student_module(model, out, info, checkpoint, quiet)
