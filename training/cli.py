"""The training-side commands: `sesam train`, `sesam weak derive` (protocols), `sesam weaksam
proposals / train-wsod / instances / retrain / eval` (paper 004), `sesam eval-instances` (mask AP)
and `sesam eval-labels` (label metrics)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.progress import track

from models.config import bounded, lookup
from models.io import read_label_png
from models.labels.schema import load_weak_labels, save_weak_labels
from training.datasets import CamVid
from training.metrics import AddedLabelQuality, ConfusionMatrix, label_report
from training.protocols import PROTOCOLS, derive

KIND_ALIASES = {"point": "points", "scribble": "scribbles", "box": "boxes", "tag": "tags", "coarse": "coarse"}


def run_derive(args: argparse.Namespace) -> int:
    kind = KIND_ALIASES.get(args.kind, args.kind)
    lookup(PROTOCOLS, kind, "weak-label kind")  # before reading the dataset
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


def _weaksam_engine(args: argparse.Namespace):
    from models.engine import build_engine
    from models.jobs.cli import engine_config_from_args

    return build_engine(engine_config_from_args(args))


def run_weaksam_proposals(args: argparse.Namespace) -> int:
    from models.config import from_mapping
    from models.labels.weaksam.proposals import ProposalOptions
    from models.students.cam import CamPredictor
    from training.weaksam import folder_proposals

    options = from_mapping(ProposalOptions, _options(args.set), "--set")
    cams = CamPredictor.cached(args.cam) if args.cam != "none" else None
    summary = folder_proposals(
        _weaksam_engine(args),
        Path(args.images),
        Path(args.weak),
        Path(args.out),
        cams,
        options,
        args.limit,
        args.quiet,
        cam_source=args.cam,
    )
    print(json.dumps(summary, indent=1))
    return 0


def run_weaksam_train(args: argparse.Namespace) -> int:
    from models.config import from_mapping
    from training.weaksam import WSODConfig, train_wsod

    cfg = from_mapping(WSODConfig, _options(args.set), "--set")
    summary = train_wsod(
        cfg, Path(args.images), Path(args.proposals), Path(args.out), args.num_classes, args.quiet
    )
    print(json.dumps(summary, indent=1))
    return 0


def run_weaksam_instances(args: argparse.Namespace) -> int:
    from models.labels import backend_defaults, build_labeler
    from training.weaksam import pseudo_instances

    engine = _weaksam_engine(args)
    options = _options(args.set) | {"cam": args.cam}
    if args.wsod and args.detector:
        raise ValueError("--wsod and --detector: give one source of pseudo boxes")
    if args.wsod:
        options |= {"wsod": args.wsod, "scorer": "wsod"}
    if args.detector:
        options |= {"detector": args.detector, "scorer": "detector"}
    labeler = build_labeler("weaksam", engine, **backend_defaults("weaksam", engine.name, options))
    # the pseudo-box source is loaded now: a bad path is one error before any image, not a failure
    # per image and an empty dataset left behind
    _ = labeler.wsod if args.wsod else labeler.detector if args.detector else None
    if args.class_names:
        names = args.class_names.split(",")
    elif args.detector:
        names = _detector_class_names(labeler.detector[1])
    else:
        names = labeler.cams.class_names
    if not names:
        raise ValueError("--class-names: the CAM checkpoint names no classes; give them comma-separated")
    summary = pseudo_instances(
        labeler,
        Path(args.images),
        Path(args.weak),
        Path(args.out),
        list(names),
        args.split,
        args.limit,
        args.quiet,
    )
    print(json.dumps(summary, indent=1))
    if summary["failed"]:
        from models.jobs.cli import failure_line

        print(f"sesam weaksam instances: {failure_line(summary['failures'])}", file=sys.stderr)
        return 1
    return 0


def _detector_class_names(meta: dict) -> list[str]:
    """Class c's name is the training file's category c + 1 (category ids there are class + 1)."""
    names = {int(c["id"]): str(c["name"]) for c in meta.get("categories") or []}
    return [names.get(c + 1, str(c + 1)) for c in range(int(meta["num_classes"]))]


def run_weaksam_eval(args: argparse.Namespace) -> int:
    from training.weaksam_eval import evaluate_detector, load_truth, report_table, write_report

    truth = load_truth(Path(args.data), args.dataset, args.split, args.limit)
    report = evaluate_detector(Path(args.detector), truth, args.device, args.quiet)
    out = Path(args.out) if args.out else Path(args.detector).parent / f"eval_{truth.name}_{truth.split}.json"
    write_report(report, out)
    print(report_table([(Path(args.detector).name, report)]))
    if len(report["per_class"]) > 1:
        print("\n| class | images | AP50 | CorLoc |\n|---|---|---|---|")
        for name, row in report["per_class"].items():
            ap, loc = row.get("AP50"), row.get("CorLoc")
            print(
                f"| {name} | {row.get('images', 0)} | {'-' if ap is None else f'{100 * ap:.1f}'} | "
                f"{'-' if loc is None else f'{100 * loc:.1f}'} |"
            )
    print(f"\nresults: {out}")
    return 0


def run_weaksam_retrain(args: argparse.Namespace) -> int:
    from models.config import from_mapping
    from training.weaksam import DetectorConfig, retrain_detector

    cfg = from_mapping(DetectorConfig, _options(args.set), "--set")
    summary = retrain_detector(cfg, Path(args.coco_root), args.split, Path(args.out), args.quiet)
    print(json.dumps(summary, indent=1))
    return 0


def _options(items: list[str]) -> dict:
    from models.config import parse_overrides

    return parse_overrides(items)


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
    d.add_argument("--seed", type=bounded(int, 0), default=0)
    d.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N images")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_derive)
    weak.set_defaults(func=lambda a: (weak.print_help(), 2)[1])

    from models.jobs.cli import add_engine_args
    from models.runtime.device import DEVICE_HELP
    from models.students.cam import SHIPPED_CAM

    ws = subparsers.add_parser(
        "weaksam", help="WeakSAM from image tags: proposals, WSOD head, pseudo instances, retraining, eval"
    )
    ws_sub = ws.add_subparsers(dest="weaksam_command", metavar="SUBCOMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--images", required=True, help="folder of images")
    common.add_argument("--out", required=True, help="output folder (resumable)")
    common.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N images")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting (see docs)"
    )
    p = ws_sub.add_parser(
        "proposals", parents=[common], help="WeakSAM-proposals: grid + CAM peaks -> SAM -> boxes"
    )
    p.add_argument("--weak", required=True, help="weak labels with tags (<stem>.json)")
    p.add_argument(
        "--cam", default=str(SHIPPED_CAM), help="CAM checkpoint for the peak prompts (`none`: grid only)"
    )
    add_engine_args(p)
    p.set_defaults(func=run_weaksam_proposals)
    t = ws_sub.add_parser(
        "train-wsod", parents=[common], help="train the WSOD head (WSDDN + OICR) on proposals"
    )
    t.add_argument("--proposals", required=True, help="the folder `sesam weaksam proposals` wrote")
    t.add_argument("--num-classes", type=bounded(int, 1), required=True)
    t.set_defaults(func=run_weaksam_train)
    i = ws_sub.add_parser(
        "instances", parents=[common], help="pseudo instance masks (WSIS) as a COCO dataset"
    )
    i.add_argument("--weak", required=True, help="weak labels with tags (<stem>.json)")
    i.add_argument("--cam", default=str(SHIPPED_CAM), help="CAM checkpoint")
    i.add_argument("--wsod", default=None, help="a trained WSOD head (else proposals are scored by the CAM)")
    i.add_argument(
        "--detector",
        default=None,
        help="a retrained detector (`sesam weaksam retrain`): its detections become the pseudo boxes",
    )
    i.add_argument(
        "--class-names",
        default=None,
        help="comma-separated (default: the CAM checkpoint's; with --detector the detector's categories)",
    )
    i.add_argument(
        "--split", default="pseudo", help="the COCO split name: annotations/instances_<split>.json"
    )
    add_engine_args(i)
    i.set_defaults(func=run_weaksam_instances)
    rt = ws_sub.add_parser(
        "retrain", help="retrain a Faster R-CNN on the pseudo boxes with RoI drop (Eq. 1-2)"
    )
    rt.add_argument("--coco-root", required=True, help="the folder `sesam weaksam instances` wrote")
    rt.add_argument("--split", default="pseudo")
    rt.add_argument("--out", required=True, help="output folder (resumable)")
    rt.add_argument("--quiet", action="store_true", help="no progress bar")
    rt.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting (docs/settings.md)"
    )
    rt.set_defaults(func=run_weaksam_retrain)
    ev = ws_sub.add_parser(
        "eval", help="box AP50 and CorLoc of a retrained detector on Penn-Fudan or a COCO file"
    )
    ev.add_argument("--detector", required=True, help="the detector.pt `sesam weaksam retrain` wrote")
    ev.add_argument(
        "--data", required=True, help="Penn-Fudan folder, or a COCO root (annotations/instances_<split>.json)"
    )
    ev.add_argument("--dataset", default="auto", choices=("auto", "pennfudan", "coco"))
    ev.add_argument("--split", default=None, help="pennfudan: train, val (default) or all; coco: val2017 ...")
    ev.add_argument(
        "--out", default=None, help="results JSON (default: eval_<dataset>_<split>.json beside the detector)"
    )
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N images")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=run_weaksam_eval)
    ws.set_defaults(func=lambda a: (ws.print_help(), 2)[1])

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
    e.add_argument("--num-classes", type=bounded(int, 1), required=True)
    e.add_argument("--ignore-index", type=bounded(int, 0, 255), default=None)
    e.add_argument("--weak", default=None, help="weak-label folder: also score the labels refinement added")
    e.set_defaults(func=run_eval)
