"""`sesam weak derive` (protocols) and `sesam eval-labels` (metrics)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.progress import track

from models.io import read_label_png
from models.weak import load_weak_labels, save_weak_labels
from training.datasets import CamVid
from training.metrics import AddedLabelQuality, ConfusionMatrix, label_report
from training.protocols import PROTOCOLS, derive

KIND_ALIASES = {"point": "points", "scribble": "scribbles", "box": "boxes", "tag": "tags", "coarse": "coarse"}


def run_derive(args: argparse.Namespace) -> int:
    kind = KIND_ALIASES.get(args.kind, args.kind)
    if kind not in PROTOCOLS:
        raise ValueError(f"--kind {args.kind!r} unknown; choose one of {sorted(PROTOCOLS)}")
    dataset = CamVid(Path(args.root), args.split)
    samples = [s for s in dataset.samples() if s.label is not None][: args.limit]
    out = Path(args.out)
    conf = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    for sample in track(samples, description=f"derive {kind}", disable=args.quiet):
        gt = read_label_png(sample.label)
        weak = derive(kind, gt, dataset.ignore_index, args.seed, sample.stem)
        save_weak_labels(weak, out, sample.stem)
        conf.update(weak.sparse_map(), gt)
    summary = {
        "kind": kind,
        "images": len(samples),
        "seed": args.seed,
        "out": str(out),
        "coverage": conf.coverage(),
        "miou_unlabeled_wrong": conf.miou(),
    }
    print(json.dumps(summary))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    pred_dir, gt_dir = Path(args.pred), Path(args.gt)
    for name, d in (("--pred", pred_dir), ("--gt", gt_dir)):
        if not d.is_dir():
            raise ValueError(f"{name} {d}: not a folder")
    gt_stems = sorted(p.stem for p in gt_dir.glob("*.png"))
    if not gt_stems:
        raise ValueError(f"--gt {gt_dir}: no <stem>.png label maps")
    conf = ConfusionMatrix(args.num_classes, args.ignore_index)
    added = AddedLabelQuality(args.ignore_index) if args.weak else None
    missing = []
    for stem in gt_stems:
        pred_path = pred_dir / f"{stem}.png"
        if not pred_path.exists():
            missing.append(stem)
            continue
        gt = read_label_png(gt_dir / f"{stem}.png")
        pred = read_label_png(pred_path)
        if pred.shape != gt.shape:
            raise ValueError(
                f"{pred_path}: {pred.shape[1]}x{pred.shape[0]} differs from ground truth "
                f"{gt.shape[1]}x{gt.shape[0]}"
            )
        conf.update(pred, gt)
        if added is not None:
            weak = load_weak_labels(args.weak, stem, gt.shape).sparse_map()
            added.update(weak, pred, gt)
    if len(missing) == len(gt_stems):
        raise ValueError(
            f"--pred {pred_dir}: none of the {len(gt_stems)} ground-truth stems has a prediction"
        )
    report = label_report(conf, None, added) | {"images": len(gt_stems) - len(missing), "missing": missing}
    print(json.dumps(report, indent=1))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from training.trainer import build_trainer, config_from_yaml

    cfg = config_from_yaml(args.config, args.set)
    summary = build_trainer(cfg).train()
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary, indent=1))
    return 0


def run_eval_instances(args: argparse.Namespace) -> int:
    from training.coco import load_coco
    from training.metrics import coco_mask_ap

    gt = load_coco(Path(args.gt)).dataset
    try:
        results = json.loads(Path(args.pred).read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"--pred {args.pred}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--pred {args.pred}: invalid JSON ({exc})") from exc
    if not isinstance(results, list):
        raise ValueError(f"--pred {args.pred}: expected a COCO results list, got {type(results).__name__}")
    for i, r in enumerate(results):
        missing = {"image_id", "category_id", "segmentation", "score"} - set(r if isinstance(r, dict) else {})
        if missing:
            raise ValueError(f"--pred {args.pred}: result [{i}] lacks {sorted(missing)}")
    report = coco_mask_ap(gt, results) | {"images": len(gt["images"]), "predictions": len(results)}
    print(json.dumps(report, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser("train", help="train a student from weak labels (YAML config)")
    t.add_argument("--config", required=True, help="YAML file with TrainConfig settings (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    t.set_defaults(func=run_train)

    weak = subparsers.add_parser("weak", help="weak-label tools")
    weak_sub = weak.add_subparsers(dest="weak_command", metavar="SUBCOMMAND")
    d = weak_sub.add_parser("derive", help="derive weak labels from dense ground truth (CamVid layout)")
    d.add_argument("--root", required=True, help="dataset folder (images/, labels/, <split>.txt)")
    d.add_argument("--split", default="val")
    d.add_argument(
        "--kind", required=True, help="points, scribbles, coarse, boxes or tags (singular works too)"
    )
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_derive)
    weak.set_defaults(func=lambda a: (weak.print_help(), 2)[1])

    ei = subparsers.add_parser("eval-instances", help="COCO mask AP of instance predictions (prints JSON)")
    ei.add_argument(
        "--pred", required=True, help="COCO results JSON (image_id, category_id, segmentation, score)"
    )
    ei.add_argument("--gt", required=True, help="COCO instances JSON (the ground truth)")
    ei.set_defaults(func=run_eval_instances)

    e = subparsers.add_parser("eval-labels", help="score label maps against ground truth (prints JSON)")
    e.add_argument(
        "--pred", required=True, help="folder of <stem>.png predictions (255 = unlabeled, counts wrong)"
    )
    e.add_argument("--gt", required=True, help="folder of <stem>.png ground truth")
    e.add_argument("--num-classes", type=int, required=True)
    e.add_argument("--ignore-index", type=int, default=None)
    e.add_argument("--weak", default=None, help="weak-label folder: also score the labels refinement added")
    e.set_defaults(func=run_eval)
