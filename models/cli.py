"""`sesam predict`: prompt the engine on one image from the command line and save masks + overlay."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from models.engine import EngineConfig, Prompt, build_engine, read_image
from models.visualize import overlay_masks


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


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by every command that prompts a segmenter."""
    parser.add_argument("--backend", default=None, help="auto (default), classical or torch")
    parser.add_argument("--sam-type", default=None, help="vit_b, vit_l, vit_h (official) or tiny (tests)")
    parser.add_argument("--sam-checkpoint", default=None, help="path to an official SAM checkpoint")
    parser.add_argument("--device", default=None, help="cpu or cuda")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """Environment first (SESAM_*), then explicit flags."""
    config = EngineConfig.from_env()
    for field in ("backend", "sam_type", "sam_checkpoint", "device"):
        value = getattr(args, field, None)
        if value is not None:
            setattr(config, field, value)
    config.validate("command line")
    return config


def _save_png_atomic(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.png")
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_predict(args: argparse.Namespace) -> int:
    image = read_image(args.image)
    points = list(args.point or []) + list(args.negative or [])
    labels = [1] * len(args.point or []) + [0] * len(args.negative or [])
    prompt = Prompt(
        points=np.asarray(points, dtype=np.float64) if points else None,
        labels=np.asarray(labels) if points else None,
        box=np.asarray(args.box, dtype=np.float64) if args.box else None,
    )
    engine = build_engine(engine_config_from_args(args))
    out = engine.predict(image, [prompt], multimask=not args.single)
    out_dir = Path(args.out)
    stem = Path(args.image).stem
    for j, mask in enumerate(out.masks[0]):
        _save_png_atomic(mask.astype(np.uint8) * 255, out_dir / f"{stem}_mask{j}.png")
    _save_png_atomic(
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
