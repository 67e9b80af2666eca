"""`sesam export sam|student|verify|quantize|tensorrt|triton`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.config import bounded
from models.engine.factory import sam_types
from models.io import atomic_write_text
from models.runtime.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _sam(args: argparse.Namespace) -> int:
    from export.onnx_export import export_sam_checkpoint, graph_progress, sam_family

    graphs = 3 if sam_family(args.sam_type) == "sam2" else 5  # encoder + decoders (+ many-prompt ones)
    with progress_bar(f"export {args.sam_type}") as progress:
        task = progress.add_task("graphs", total=graphs, info="")

        def written(name: str) -> None:
            progress.update(task, advance=1, info=f"wrote {name}")

        with graph_progress(written):
            md = export_sam_checkpoint(
                args.sam_type, args.checkpoint, args.out, random_seed=args.random_weights
            )
    if args.int8:
        from export.quantize import quantize_encoder

        quantize_encoder(args.out)
    print(f"wrote {', '.join(f['path'] for f in md['files'].values())} and metadata.json to {args.out}")
    return 0


def _student(args: argparse.Namespace) -> int:
    from export.onnx_export import export_student_checkpoint

    md = export_student_checkpoint(args.checkpoint, args.out)
    print(
        f"wrote {md['files']['student']['path']} ({md['student']}, {md['num_classes']} classes) to {args.out}"
    )
    return 0


def _half(args: argparse.Namespace) -> int:
    from models.io import load_checkpoint, save_checkpoint
    from models.students import cam, instance, semantic  # their kinds and pre-version-1 layouts

    kinds = (semantic.CHECKPOINT_KIND, instance.CHECKPOINT_KIND, cam.CHECKPOINT_KIND)
    checkpoint = load_checkpoint(args.checkpoint, kinds, "student or CAM checkpoint")
    weights = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint.weights.items()}
    metadata = dict(checkpoint.metadata)
    if args.note:
        metadata["trained_with"] = args.note
    if args.class_names:
        names = [n.strip() for n in args.class_names.split(",")]
        num_classes = int(checkpoint.config["num_classes"])
        if len(names) != num_classes:
            raise ValueError(f"--class-names: {len(names)} names for {num_classes} classes")
        metadata["class_names"] = names
    save_checkpoint(args.out, checkpoint.kind, checkpoint.config, weights, metadata)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB, fp16 weights)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from export.verify import as_rows, sample_images, verify
    from models.runtime.onnx_runtime import read_metadata

    kind = read_metadata(args.directory)["kind"]
    counts = tuple(args.prompts)
    with progress_bar(f"verify {args.directory}") as progress:
        total = len(sample_images(0, args.image, args.samples))
        task = progress.add_task("verify", total=total, info=kind)
        cases = verify(
            args.directory,
            args.checkpoint,
            atol=args.atol,
            min_agreement=args.min_agreement,
            prompt_counts=counts,
            images=args.image,
            samples=args.samples,
            progress=lambda: progress.advance(task),
        )
    table = Table(title=f"PyTorch vs ONNX Runtime: {args.directory}")
    for col in (
        "model",
        "image",
        "size",
        "prompts/batch",
        "multimask",
        "mask input",
        "max |diff| logits",
        "embedding |diff|",
        "mask agreement",
        "IoU |diff|",
        "ok",
    ):
        table.add_column(col)
    for c in cases:
        table.add_row(
            c.model,
            c.image,
            f"{c.size[0]}x{c.size[1]}",
            str(c.prompts),
            "-" if c.multimask is None else str(c.multimask),
            "yes" if c.mask_input else "-",
            f"{c.max_abs_diff:.2e}",
            "-" if c.embedding_diff is None else f"{c.embedding_diff:.2e}",
            f"{100 * c.mask_agreement:.4f}%",
            "-" if c.iou_diff is None else f"{c.iou_diff:.2e}",
            "yes" if c.passed else "NO",
        )
    Console().print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(as_rows(cases), indent=1))
    failed = [c for c in cases if not c.passed]
    if failed:
        print(
            f"{len(failed)} of {len(cases)} cases over tolerance (atol {args.atol:g}, agreement {args.min_agreement:g})",
            file=sys.stderr,
        )
        return 1
    print(f"all {len(cases)} cases within atol {args.atol:g} and agreement >= {args.min_agreement:g}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from export.quantize import fidelity, quantize_encoder, quantize_student
    from models.runtime.onnx_runtime import SAM_KINDS, read_metadata

    if read_metadata(args.directory)["kind"] not in SAM_KINDS:
        images = None
        if args.calibration:
            from models.engine import read_image

            files = sorted(p for p in Path(args.calibration).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                print(f"sesam export quantize: no images in {args.calibration}", file=sys.stderr)
                return 2
            images = [read_image(p) for p in files[: args.calibration_count]]
        path = quantize_student(args.directory, args.mode, images)
        print(f"wrote {path} ({args.mode} int8); run it with runtime onnx, onnx_file student_int8")
        return 0
    path = quantize_encoder(args.directory)
    print(f"wrote {path}")
    print(json.dumps(fidelity(args.directory), indent=1))
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    from export.tensorrt import build_engines
    from models.runtime.onnx_runtime import read_metadata
    from models.runtime.tensorrt_runtime import TensorRTUnavailable

    read_metadata(args.directory)  # a wrong directory is bad input (2), whether or not TensorRT is here
    try:
        built = build_engines(args.directory, fp16=args.fp16, workspace=args.workspace_gb << 30)
    except TensorRTUnavailable as exc:
        print(f"sesam export tensorrt: {exc}", file=sys.stderr)
        return 3
    for role, name in built.items():
        print(f"{role}: {name}")
    return 0


def _triton(args: argparse.Namespace) -> int:
    from export.triton import write_repository

    platform = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[args.platform]
    for model in write_repository(args.directory, args.repo, platform, args.prefix, args.instances):
        print(f"wrote {model}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export SAM / students to ONNX, TensorRT, Triton")
    sub = parser.add_subparsers(dest="export_command", metavar="WHAT", required=True)

    p = sub.add_parser(
        "sam",
        help="SAM, SAM 2.1 or the light SAM: encoder + decoders to ONNX (dynamic batch, prompts, points)",
    )
    p.add_argument("--sam-type", default="vit_b", choices=sorted(sam_types()))
    p.add_argument(
        "--checkpoint",
        default=None,
        help="official checkpoint, e.g. sam_vit_b_01ec64.pth, sam2.1_hiera_tiny.pt, efficientvit_sam_l0.pt",
    )
    p.add_argument(
        "--random-weights",
        type=int,
        default=None,
        metavar="SEED",
        help="no checkpoint: seeded random weights (benchmarks)",
    )
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantized int8 encoder")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_sam)

    p = sub.add_parser("student", help="a student checkpoint to ONNX (dynamic batch, height, width)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_student)

    p = sub.add_parser(
        "half", help="a student or CAM checkpoint with fp16 weights (loads as fp32; for shipping)"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--note", default=None, help="how it was trained (stored in the checkpoint)")
    p.add_argument("--class-names", default=None, help="comma-separated class names to store (if missing)")
    p.set_defaults(func=_half)

    p = sub.add_parser("verify", help="PyTorch vs ONNX Runtime parity of an export directory")
    p.add_argument("directory")
    p.add_argument("--checkpoint", default=None, help="source checkpoint if not the one in metadata.json")
    p.add_argument("--atol", type=bounded(float, 0), default=1e-4)
    p.add_argument("--min-agreement", type=bounded(float, 0, 1), default=0.999)
    p.add_argument("--prompts", type=bounded(int, 1), nargs="+", default=[1, 5, 64])
    p.add_argument(
        "--samples",
        type=int,
        default=4,
        choices=range(1, 5),
        help="how many of the 4 sample images (quicker)",
    )
    p.add_argument("--json", default=None, help="also write the cases as JSON here")
    p.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="also verify on this image (repeatable)"
    )
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "quantize", help="int8: the SAM encoder (dynamic, + fidelity report) or a student (dynamic or static)"
    )
    p.add_argument("directory")
    p.add_argument("--mode", choices=["dynamic", "static"], default="dynamic", help="students only")
    p.add_argument("--calibration", default=None, help="students, static: a folder of calibration images")
    p.add_argument(
        "--calibration-count", type=bounded(int, 1), default=64, help="at most this many calibration images"
    )
    p.set_defaults(func=_quantize)

    p = sub.add_parser("tensorrt", help="TensorRT engines from the ONNX files (needs TensorRT + CUDA)")
    p.add_argument("directory")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--workspace-gb", type=bounded(int, 1), default=4)
    p.set_defaults(func=_tensorrt)

    p = sub.add_parser("triton", help="a Triton model repository from an export directory")
    p.add_argument("directory")
    p.add_argument("--repo", required=True, help="model repository directory to write")
    p.add_argument("--platform", choices=["onnx", "tensorrt"], default="onnx")
    p.add_argument("--prefix", default="sam_", help="model name prefix for SAM models")
    p.add_argument("--instances", type=bounded(int, 1), default=1, help="model instances per GPU or CPU")
    p.set_defaults(func=_triton)
