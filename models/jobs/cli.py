"""`sesam predict` (prompt the engine on one image; masks + overlay) and `sesam refine` (weak labels
to dense labels for a folder), with the engine flags every prompting command shares."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.config import bounded, lookup, parse_overrides
from models.engine import ENGINE_BACKENDS, EngineConfig, Prompt, build_engine, read_image
from models.engine.factory import SAM_BACKENDS, sam_types
from models.io import save_png
from models.jobs.coco import LABEL_STUDIO_PREFIX
from models.jobs.refine import RefineRun, refine_folder
from models.jobs.visualize import overlay_masks
from models.labels import LABELERS, backend_defaults, build_labeler
from models.labels.formats import WEAK_FORMATS
from models.labels.merge import OVERLAP_RULES
from models.labels.sampling import SAMPLERS, TRAINING_ONLY_SAMPLERS
from models.labels.selection import SELECTORS
from models.labels.sesam import PROMPT_TYPES
from models.runtime.device import check_device_name, resolve_device
from models.students.cam import SHIPPED_CAM
from models.students.semantic import SHIPPED_SEMANTIC_STUDENT


def _pairs(text: str) -> list[list[float]]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers 'x,y[,x,y...]', got {text!r}") from exc
    if len(values) % 2:
        raise argparse.ArgumentTypeError(f"expected an even count of numbers (x,y pairs), got {text!r}")
    return [values[i : i + 2] for i in range(0, len(values), 2)]


def _box(text: str) -> list[float]:
    values = [v for pair in _pairs(text) for v in pair]
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"a box is x0,y0,x1,y1; got {text!r}")
    return values


def _sampler(name: str) -> str:
    """--sampling: a registered sampler that runs without a teacher."""
    if name in TRAINING_ONLY_SAMPLERS:
        raise argparse.ArgumentTypeError(
            f"{name!r} samples where a teacher is confident, so it runs in training only "
            f"(sesam train with sesam: {{sampling: {name}}})"
        )
    try:
        lookup(SAMPLERS, name, "sampling")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by every command that prompts a segmenter."""
    parser.add_argument(
        "--backend",
        choices=["auto", *ENGINE_BACKENDS],
        default=None,
        help="auto (default: with a checkpoint the SAM backend of --sam-type, onnx with an export dir, "
        "else classical)",
    )
    parser.add_argument(
        "--sam-type",
        choices=sorted(sam_types()),
        default=None,
        help="SAM 1 vit_b/l/h (backend torch), SAM 2.1 sam2.1_hiera_* (backend sam2), efficientvit-sam-l* "
        "(backend light); tiny: random weights, tests",
    )
    parser.add_argument("--sam-checkpoint", default=None, help="path to an official SAM checkpoint")
    parser.add_argument("--device", default=None, help="cpu or cuda")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Environment first (SESAM_*), then explicit flags, validated together (`EngineConfig.from_env`)."""
    fields = ("backend", "sam_type", "sam_checkpoint", "device")
    config = EngineConfig.from_env(flags={f: getattr(args, f, None) for f in fields})
    if getattr(args, "sam_type", None) is not None:
        check_sam_type_flag(config)
    return config


def check_sam_type_flag(config: EngineConfig) -> None:
    """A `--sam-type` flag is refused where the engine it configures is no SAM (it would be ignored)."""
    backend = config.resolved_backend()
    if backend not in SAM_BACKENDS:
        why = "auto picks a SAM backend only with --sam-checkpoint" if config.backend == "auto" else "drop it"
        raise ValueError(f"--sam-type: backend {backend} reads no SAM type ({why}; or name --backend)")


def run_predict(args: argparse.Namespace) -> int:
    config = engine_config_from_args(args)  # a bad flag is refused before any file is read
    image = read_image(args.image)
    points = list(args.point or []) + list(args.negative or [])
    labels = [1] * len(args.point or []) + [0] * len(args.negative or [])
    prompt = Prompt(
        points=np.asarray(points, dtype=np.float64) if points else None,
        labels=np.asarray(labels) if points else None,
        box=np.asarray(args.box, dtype=np.float64) if args.box else None,
    )
    engine = build_engine(config)
    out = engine.predict(image, [prompt], multimask=not args.single)
    out_dir = Path(args.out)
    stem = Path(args.image).stem
    for j, mask in enumerate(out.masks[0]):
        save_png(mask.astype(np.uint8) * 255, out_dir / f"{stem}_mask{j}.png")
    save_png(
        overlay_masks(
            image,
            out.masks[0],
            points=np.asarray(points) if points else None,
            labels=np.asarray(labels) if points else None,
            box=args.box,
        ),
        out_dir / f"{stem}_overlay.png",
    )
    summary = {
        "backend": engine.name,
        "image": str(args.image),
        "iou": out.iou[0].round(4).tolist(),
        "stability": out.stability[0].round(4).tolist(),
        "areas": out.masks[0].sum((1, 2)).tolist(),
        "out": str(out_dir),
    }
    print(json.dumps(summary))
    return 0


def labeler_options(args: argparse.Namespace) -> dict:
    """The chosen method's options from the command line (only those the user set; `--set` last)."""
    if args.method == "sesam":
        names = (
            "k",
            "sampling",
            "selection",
            "prompt",
            "tau1",
            "tau2",
            "overlap",
            "seed",
            "scribble_points",
            "negatives",
        )
        opts = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        if args.no_instance_separation:
            opts["instance_separation"] = False
        if args.exclude_conflicts:
            opts["exclude_conflicts"] = True
        return backend_defaults(args.method, args.backend_name, opts | parse_overrides(args.set))
    names = {
        "naive": ("overlap", "scribble_points"),
        "sepl": ("points_per_side", "pred_iou_thresh", "stability_thresh", "overlap", "rule", "cam"),
        "weaksam": ("points_per_side", "overlap", "cam", "wsod"),
        "grounded": ("box_source", "detector", "vocabulary"),
    }[args.method]
    opts = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.method == "weaksam" and "wsod" in opts:
        opts["scorer"] = "wsod"
    opts |= parse_overrides(args.set)
    return backend_defaults(args.method, args.backend_name, opts)


def refine_run_from_args(args: argparse.Namespace, options: dict) -> RefineRun:
    """The `sesam refine` folders and switches (shared with `--endpoint` runs in serving.cli)."""
    return RefineRun(
        images=Path(args.images),
        weak=Path(args.weak),
        out=Path(args.out),
        method=args.method,
        num_classes=args.num_classes,
        overlays=Path(args.overlays) if args.overlays else None,
        report=args.report,
        overwrite=args.overwrite,
        limit=args.limit,
        options=options,
        image_prefix=args.ls_image_prefix,
        weak_source=getattr(args, "weak_source", None),
    )


def report_refine_summary(summary: dict) -> int:
    return report_summary(summary, "refine")


def add_folder_args(parser: argparse.ArgumentParser, overlay: str) -> None:
    """Switches every folder job has (`sesam refine`, `sesam segment`): overlays and report, resume,
    limit, progress, and Ray."""
    parser.add_argument("--overlays", default=None, help=f"also write {overlay} overlay PNGs here")
    parser.add_argument(
        "--report", action="store_true", help="write report.html with pictures (implies overlays)"
    )
    parser.add_argument("--overwrite", action="store_true", help="redo images already done (default: resume)")
    parser.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ls-image-prefix",
        default=LABEL_STUDIO_PREFIX,
        help="label_studio.json: each task's image URL is this + the image's file name "
        f"(default {LABEL_STUDIO_PREFIX!r}: Label Studio's local-files storage; docs/labeling.md)",
    )
    add_ray_args(parser)


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    """`--ray [ADDRESS]` and the worker count, shared by `sesam refine` and `sesam segment`."""
    g = parser.add_argument_group("scale-out on Ray (pip install 'sesam[ray]')")
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data: no ADDRESS starts a local cluster; `auto` or ray://HOST:10001 joins one",
    )
    g.add_argument("--ray-workers", type=int, default=2, help="actors, each holding one model (2)")
    g.add_argument(
        "--ray-gpus", type=float, default=None, help="GPUs per actor (default: 1 if the cluster has GPUs)"
    )


def ray_options_from_args(args: argparse.Namespace):
    from models.jobs.folders import RayOptions

    if args.ray is None:
        return None
    address = None if args.ray == "local" else args.ray
    return RayOptions(address=address, workers=args.ray_workers, gpus_per_worker=args.ray_gpus)


def segment_run_from_args(args: argparse.Namespace):
    """The `sesam segment` folders and switches (shared with `--endpoint` runs in serving.cli)."""
    from models.jobs.segment import SegmentRun

    if not 0.0 <= args.min_score <= 1.0:
        raise ValueError(f"--min-score must lie in [0, 1], got {args.min_score}")
    return SegmentRun(
        images=Path(args.images),
        out=Path(args.out),
        min_score=args.min_score,
        overlays=Path(args.overlays) if args.overlays else None,
        report=args.report,
        overwrite=args.overwrite,
        limit=args.limit,
        image_prefix=args.ls_image_prefix,
    )


def report_summary(summary: dict, command: str) -> int:
    """Print a folder job's summary (without the per-image part); exit status 1 when any image failed."""
    print(json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=1))
    if summary["failed"]:
        print(f"sesam {command}: {failure_line(summary['failures'])}", file=sys.stderr)
        return 1
    return 0


def failure_line(failures: dict[str, str], shown: int = 3) -> str:
    """One line for a folder job's failed images (stem -> error), grouped by error, so that a
    problem with the whole run (a bad checkpoint, no weak labels) reads once with its reason."""
    by_error: dict[str, list[str]] = {}
    for stem, error in failures.items():
        by_error.setdefault(error or "unknown error", []).append(stem)
    parts = []
    for error, stems in list(by_error.items())[:shown]:
        names = ", ".join(stems[:shown]) + (f" and {len(stems) - shown} more" if len(stems) > shown else "")
        parts.append(f"{names}: {error}")
    more = f"; {len(by_error) - shown} other errors (summary.json)" if len(by_error) > shown else ""
    return f"{len(failures)} image(s) failed: " + "; ".join(parts) + more


def run_segment(args: argparse.Namespace) -> int:
    from models.jobs.segment import LoadStudent, segment_folder
    from models.students.runtime import check_providers

    run = segment_run_from_args(args)
    ray = ray_options_from_args(args)
    threads = args.threads or (max(1, int(ray.cpus_per_worker)) if ray is not None else None)
    torch_student = args.runtime == "torch" or (args.runtime == "auto" and Path(args.student).is_file())
    if ray is None and torch_student:  # also a device that is not here; on Ray the workers' count
        resolve_device(args.device)
    else:
        check_device_name(args.device, "--device")
    check_providers(args.student, args.providers)  # here, not first inside a Ray worker
    factory = LoadStudent(args.student, args.runtime, args.device, args.providers, args.min_score, threads)
    name = Path(args.student).name
    summary = segment_folder(run, factory, name, quiet=args.quiet, ray=ray)
    return report_summary(summary, "segment")


def run_cam(args: argparse.Namespace) -> int:
    from models.jobs.cam import CamRun, cam_folder

    run = CamRun(
        images=Path(args.images),
        out=Path(args.out),
        checkpoint=Path(args.cam),
        weak=Path(args.weak) if args.weak else None,
        threshold=args.threshold,
        background_class=args.background_class,
        report=args.report,
        overwrite=args.overwrite,
        limit=args.limit,
    )
    summary = cam_folder(run, quiet=args.quiet, ray=ray_options_from_args(args))
    return report_summary(summary, "cam")


def stage_weak_args(args: argparse.Namespace) -> None:
    """`--weak` as a folder of weak labels: a labeling tool's export (`--weak-format`, a .xml is
    CVAT) is staged under `--out` first; its class count bounds `--num-classes` when not given.
    Shared by in-process and `--endpoint` runs."""
    from models.jobs.refine import stage_weak_labels

    weak_format = args.weak_format or ("cvat" if Path(args.weak).suffix.lower() == ".xml" else "folder")
    args.weak_source = None if weak_format == "folder" else Path(args.weak)
    args.weak, class_names = stage_weak_labels(Path(args.weak), weak_format, Path(args.out), args.overwrite)
    if class_names is not None and args.num_classes is None:
        args.num_classes = len(class_names)


def run_refine(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from models.jobs.refine import BuildRefineOne, process_folder

    config = engine_config_from_args(args)
    engine = build_engine(config)
    args.backend_name = engine.name
    options = labeler_options(args)
    stage_weak_args(args)
    run = refine_run_from_args(args, options)
    ray = ray_options_from_args(args)
    if ray is not None:  # every actor builds its own engine and labeler from the same settings
        factory = BuildRefineOne(run, asdict(config), args.method, options)
        return report_refine_summary(process_folder(run, factory, engine.name, quiet=args.quiet, ray=ray))
    labeler = build_labeler(args.method, engine, **options)
    return report_refine_summary(refine_folder(run, engine, labeler, quiet=args.quiet))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="segment one image from point/box prompts; write masks and overlay"
    )
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--point", type=_pairs, action="extend", help="positive point(s) x,y[,x,y...]")
    p.add_argument("--negative", type=_pairs, action="extend", help="negative point(s) x,y[,x,y...]")
    p.add_argument("--box", type=_box, help="box x0,y0,x1,y1")
    p.add_argument("--single", action="store_true", help="one mask instead of three candidates")
    p.add_argument("--out", default="out/predict", help="output folder")
    add_engine_args(p)
    p.set_defaults(func=run_predict)

    r = subparsers.add_parser("refine", help="weak labels -> dense labels for a folder of images")
    r.add_argument("--images", required=True, help="folder of images (<stem>.jpg/.png/...)")
    r.add_argument(
        "--weak",
        required=True,
        help="folder of weak labels (<stem>.json and/or <stem>.png), or a labeling tool's export (--weak-format)",
    )
    r.add_argument(
        "--weak-format",
        choices=["folder", *sorted(WEAK_FORMATS)],
        default=None,
        help="what --weak is: folder (default), cvat (CVAT for images 1.1 XML; the default for .xml), "
        "coco-boxes / coco-points (COCO instances JSON: one box / one inner point per object)",
    )
    r.add_argument("--out", required=True, help="output folder for <stem>.png class maps (255 = unlabeled)")
    r.add_argument("--method", choices=sorted(LABELERS), default="sesam")
    r.add_argument("--num-classes", type=bounded(int, 1), default=None, help="reject class ids >= this")
    add_folder_args(r, "weak|refined")
    g = r.add_argument_group("sesam options (paper defaults)")
    g.add_argument("--k", type=int, default=None, help="points per component (5)")
    g.add_argument(
        "--sampling",
        type=_sampler,
        default=None,
        help=f"one of {sorted(set(SAMPLERS) - TRAINING_ONLY_SAMPLERS)} (skeleton-grid)",
    )
    g.add_argument("--selection", choices=sorted(SELECTORS), default=None, help="coverage")
    g.add_argument("--prompt", choices=PROMPT_TYPES, default=None, help="points")
    g.add_argument("--no-instance-separation", action="store_true")
    g.add_argument("--tau1", type=float, default=None, help="0.3")
    g.add_argument("--tau2", type=float, default=None, help="0.7")
    g.add_argument("--seed", type=bounded(int, 0), default=None)
    g.add_argument("--scribble-points", type=int, default=None, help="points spread along a scribble (10)")
    g.add_argument("--overlap", choices=OVERLAP_RULES, default=None, help="class overlaps (score)")
    g.add_argument(
        "--exclude-conflicts",
        action="store_true",
        help="never choose a candidate holding another class's weak pixel (not in the paper; off)",
    )
    g.add_argument(
        "--negatives",
        type=int,
        default=None,
        help="nearest other-class weak points added to each point prompt as negative clicks (not in the paper; 0)",
    )
    s = r.add_argument_group("sepl / weaksam / grounded options (image tags; docs/tags.md)")
    s.add_argument(
        "--points-per-side", type=int, default=None, help="sepl / weaksam: grid prompts per side (16)"
    )
    s.add_argument(
        "--pred-iou-thresh",
        type=bounded(float, 0, 1),
        default=None,
        help="sepl: 0.86 (0 with the classical prior)",
    )
    s.add_argument(
        "--stability-thresh",
        type=bounded(float, 0, 1),
        default=None,
        help="sepl: 0.92 (0 with the classical prior)",
    )
    s.add_argument("--rule", default=None, help="sepl: paper (default), authors or keep_pseudo")
    s.add_argument(
        "--cam", default=None, help="sepl / weaksam: CAM checkpoint (default: the shipped CamVid one)"
    )
    s.add_argument(
        "--wsod", default=None, help="weaksam: a trained WSOD head (else the CAM scores proposals)"
    )
    s.add_argument("--box-source", default=None, help="grounded: grounding-dino, owlv2 or user")
    s.add_argument("--detector", default=None, help="grounded: the HF checkpoint folder of the box source")
    s.add_argument("--vocabulary", default=None, help="grounded: class prompts (camvid, voc, pennfudan)")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option of the method (docs/settings.md)",
    )
    add_engine_args(r)
    r.set_defaults(func=run_refine)

    g = subparsers.add_parser(
        "segment", help="a folder of images through a student (label maps or instances)"
    )
    g.add_argument("--images", required=True, help="folder of images (<stem>.jpg/.png/...)")
    g.add_argument(
        "--out", required=True, help="output folder: <stem>.png label maps or <stem>.json instances"
    )
    g.add_argument(
        "--student",
        default=str(SHIPPED_SEMANTIC_STUDENT),
        help="a .pt checkpoint or an export directory, semantic or instance (default: the shipped CamVid student)",
    )
    g.add_argument("--runtime", choices=["auto", "torch", "onnx", "tensorrt"], default="auto")
    g.add_argument("--providers", default=None, help="onnx: execution providers, comma-separated")
    g.add_argument("--device", default="cpu", help="torch: cpu or cuda")
    g.add_argument(
        "--min-score",
        type=bounded(float, 0, 1),
        default=0.5,
        help="instance students: lowest score kept (0.5)",
    )
    g.add_argument(
        "--threads",
        type=bounded(int, 1, 4096),
        default=None,
        help="intra-op threads per student (default: all cores; on Ray the actor's CPUs). Answers are "
        "byte-identical between runs with equal thread counts",
    )
    add_folder_args(g, "image|answer")
    g.set_defaults(func=run_segment)

    c = subparsers.add_parser("cam", help="class activation maps of a folder of images (a CAM classifier)")
    c.add_argument("--images", required=True, help="folder of images (<stem>.jpg/.png/...)")
    c.add_argument("--out", required=True, help="output folder: <stem>.npz CAMs and <stem>.png pseudo-labels")
    c.add_argument(
        "--cam",
        default=str(SHIPPED_CAM),
        help="CAM checkpoint (`sesam train` mode cam; default: the shipped CamVid one)",
    )
    c.add_argument(
        "--weak", default=None, help="weak labels whose tags pick the classes (else: predicted >= 0.5)"
    )
    c.add_argument(
        "--threshold",
        type=bounded(float, 0, 1),
        default=None,
        help="background threshold on normalised CAMs in [0, 1] (default: the checkpoint's; 0: no pixel "
        "is background)",
    )
    c.add_argument(
        "--background-class",
        type=bounded(int, 0, 255),
        default=None,
        help="the dataset's background id (else 255)",
    )
    c.add_argument("--report", action="store_true", help="write overlays and report.html")
    c.add_argument("--overwrite", action="store_true", help="redo images already done (default: resume)")
    c.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N images")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_args(c)
    c.set_defaults(func=run_cam)
