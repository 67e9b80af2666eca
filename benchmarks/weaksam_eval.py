"""WeakSAM's retrained detector, measured: box AP50 and CorLoc on Penn-Fudan val beside baselines
from the same run.

Pipeline (Penn-Fudan train; every image is tagged `pedestrian`, the class id 9 of the shipped
CamVid CAM, whose class names the pseudo COCO file takes; `sesam weaksam eval` matches
`pedestrian` to Penn-Fudan's class by name):

1. pseudo instances (`training.weaksam.pseudo_instances`): WeakSAM-proposals (a `--grid` x
   `--grid` grid + the CAM's pedestrian peaks, the paper's Algorithm 1 settings) on the engine
   (default: the weight-free classical prior), scored by the CAM (`scorer: cam`: no WSOD head is
   trained, see below), Algorithm 2 with the paper's tau_s / tau_o, SAM box prompts;
2. the Faster R-CNN retrained on those pseudo boxes under RoI drop (`retrain_detector`,
   `--iterations` steps from random weights, MobileNetV3-Large FPN, on the CPU), and the same
   without RoI drop (the paper's Table 5 ablation);
3. the same detector, same seed and steps, with and without RoI drop, trained on Penn-Fudan's
   own train boxes: what this training budget can reach with perfect boxes.

Rows, all scored by `training.weaksam_eval` on Penn-Fudan val (34 images) unless the
row says train:
- the detector before any step (its random initial weights, the same as step 2's): the floor;
- WeakSAM's detections before retraining (proposals scored by the CAM, per-class NMS): the WSOD
  stage the paper retrains from (its Table 1 compares the two);
- the pseudo ground truth itself on train (what the detector learns from);
- the retrained detectors (step 2), and the detector trained on true boxes (step 3).

A WSOD head (`sesam weaksam train-wsod`) is not trained here: every Penn-Fudan image carries the
same single tag, so multiple-instance learning has no signal to localise with (as on CamVid).

Run: `python benchmarks/weaksam_eval.py [--iterations 100] [--grid 8] [--limit N]`; writes
benchmarks/results/weaksam_eval.md and .json. Every step resumes from runs/bench_weaksam/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from models.config import from_mapping
from models.engine import EngineConfig, build_engine, read_image
from models.io import atomic_write_text, save_json
from models.labels.schema import WeakLabels, save_weak_labels
from models.labels.weaksam.labeler import WeakSAMLabeler, WeakSAMOptions
from models.students.detector import save_detector
from training.datasets import PennFudan
from training.weaksam import DetectorConfig, build_detector, pseudo_instances, retrain_detector
from training.weaksam_eval import (
    class_map,
    evaluate_detections,
    evaluate_detector,
    pennfudan_annotation,
    pennfudan_truth,
    report_table,
)

ROOT = Path(__file__).resolve().parents[1]
PENNFUDAN = ROOT.parent / "shared" / "data" / "pennfudan"
PEDESTRIAN = 9  # CamVid's class id of pedestrians: the shipped CamVid CAM's class


def link_split(split: str, work: Path, limit: int | None) -> tuple[Path, Path, list[str]]:
    """work/images/<split>/ (links to Penn-Fudan's images) and work/weak/ tags (pedestrian)."""
    images, weak = work / "images" / split, work / "weak"
    images.mkdir(parents=True, exist_ok=True)
    stems = PennFudan(PENNFUDAN, split).stems()[:limit]
    for stem in stems:
        link = images / f"{stem}.png"
        if not link.exists():
            os.symlink((PENNFUDAN / "PNGImages" / f"{stem}.png").resolve(), link)
        if not (weak / f"{stem}.json").exists():
            (h, w), _ = pennfudan_annotation(PENNFUDAN / "Annotation" / f"{stem}.txt")
            save_weak_labels(WeakLabels(h, w, tags=[PEDESTRIAN]), weak, stem)
    return images, weak, stems


def gt_coco(stems: list[str], work: Path, class_names: list[str]) -> Path:
    """Penn-Fudan train boxes as a COCO file in the pseudo file's class layout (category c + 1 =
    class c of the CAM, pedestrian = 10), images linked: the true-box training set of step 3."""
    root = work / "gt"
    (root / "train").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for n, stem in enumerate(stems, start=1):
        (h, w), boxes = pennfudan_annotation(PENNFUDAN / "Annotation" / f"{stem}.txt")
        images.append({"id": n, "file_name": f"{stem}.png", "height": h, "width": w})
        link = root / "train" / f"{stem}.png"
        if not link.exists():
            os.symlink((PENNFUDAN / "PNGImages" / f"{stem}.png").resolve(), link)
        for x0, y0, x1, y1 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": PEDESTRIAN + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    save_json(
        {"images": images, "annotations": annotations, "categories": categories},
        root / "annotations" / "instances_train.json",
    )
    return root


def wsod_stage(labeler: WeakSAMLabeler, truth, names: list[str], cache: Path, console: Console):
    """WeakSAM's detections before retraining on every image of `truth` (cached per image)."""
    classes = class_map([{"id": c + 1, "name": n} for c, n in enumerate(names)], len(names), truth.categories)
    out, seconds = {}, []
    for image_id, path in sorted(truth.paths.items()):
        target = cache / f"{path.stem}.json"
        if not target.exists():
            started = time.perf_counter()
            image = read_image(path)
            handle = labeler.engine.embed([image])[0]
            _, (boxes, scores, labels), _ = labeler.detect(image, handle, [PEDESTRIAN])
            rec = {
                "boxes": np.round(boxes, 1).tolist(),
                "scores": np.asarray(scores, float).round(5).tolist(),
                "labels": np.asarray(labels, int).tolist(),
                "seconds": time.perf_counter() - started,
            }
            save_json(rec, target)
            console.print(f"wsod stage {path.stem}: {len(rec['boxes'])} detections")
        rec = json.loads(target.read_text())
        seconds.append(rec["seconds"])
        labels = np.asarray(rec["labels"], int)
        known = np.asarray([int(c) in classes for c in labels], bool)
        out[image_id] = (
            np.asarray(rec["boxes"], float).reshape(-1, 4)[known],
            np.asarray(rec["scores"], float)[known],
            np.asarray([classes[int(c)] for c in labels[known]], int),
        )
    return out, float(np.mean(seconds)) if seconds else 0.0


def pgt_as_detections(pseudo: Path, truth, names: list[str]):
    """The pseudo COCO file's boxes (with their PGT scores) as detections on Penn-Fudan's image ids."""
    coco = json.loads((pseudo / "annotations" / "instances_pseudo.json").read_text())
    classes = class_map(coco["categories"], len(coco["categories"]), truth.categories)
    by_name = {path.name: image_id for image_id, path in truth.paths.items()}
    file_of = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[int, tuple[list, list, list]] = {i: ([], [], []) for i in truth.paths}
    for a in coco["annotations"]:
        cls = int(a["category_id"]) - 1
        image_id = by_name.get(file_of[a["image_id"]])
        if image_id is None or cls not in classes:
            continue
        x, y, w, h = a["bbox"]
        out[image_id][0].append([x, y, x + w, y + h])
        out[image_id][1].append(a.get("score", 1.0))
        out[image_id][2].append(classes[cls])
    return {
        k: (np.asarray(b, float).reshape(-1, 4), np.asarray(s, float), np.asarray(c, int))
        for k, (b, s, c) in out.items()
    }


def first_step_drop(cfg: DetectorConfig, root: Path, split: str, n_images: int = 2) -> dict[str, float]:
    """RoI drop at the detector's first step (its initial weights, the first `n_images` images of
    the COCO file): the share of positive and of background RoIs the paper rule keeps, and the
    positive RoIs' median losses."""
    from models.students.detector import image_tensor
    from models.students.roi_drop import per_roi_losses, roi_keep

    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    torch.manual_seed(cfg.seed)
    model = build_detector(len(coco["categories"]), cfg).train()
    images, targets = [], []
    for im in coco["images"][:n_images]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        images.append(image_tensor(read_image(root / split / im["file_name"])))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        labels = [a["category_id"] for a in anns]
        targets.append({"boxes": torch.tensor(boxes).float(), "labels": torch.tensor(labels)})
    heads = model.roi_heads
    with torch.no_grad():
        batch, targets = model.transform(images, targets)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features, targets)
        proposals, _, labels, regression = heads.select_training_samples(proposals, targets)
        pooled = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        logits, deltas = heads.box_predictor(pooled)
        labels, regression = torch.cat(labels), torch.cat(regression)
        cls, reg = per_roi_losses(logits, deltas, labels, regression)
    keep, positive = roi_keep(cls, reg, cfg.tau_cls, cfg.tau_reg, "paper"), labels > 0
    return {
        "positives": int(positive.sum()),
        "rois": len(labels),
        "positives_kept": float(keep[positive].mean()),
        "background_kept": float(keep[~positive].mean()),
        "positive_cls_median": float(cls[positive].median()),
        "positive_reg_median": float(reg[positive].median()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=100, help="detector training steps (both detectors)")
    p.add_argument("--grid", type=int, default=8, help="WeakSAM grid prompts per side")
    p.add_argument("--limit", type=int, default=None, help="only the first N train images")
    p.add_argument("--min-size", type=int, default=256, help="the detector's shorter image side")
    p.add_argument("--max-size", type=int, default=384, help="the detector's longer side cap")
    p.add_argument("--backend", default="classical")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_weaksam"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "weaksam_eval.md"))
    args = p.parse_args()
    console, work = Console(), Path(args.work)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    engine = build_engine(EngineConfig(backend=args.backend))
    labeler = WeakSAMLabeler(engine, WeakSAMOptions(points_per_side=args.grid))
    names = list(labeler.cams.class_names)
    train_images, weak, train_stems = link_split("train", work, args.limit)
    link_split("val", work, None)
    val, train = pennfudan_truth(PENNFUDAN, "val"), pennfudan_truth(PENNFUDAN, "train", args.limit)

    started = time.perf_counter()
    pseudo = work / f"pseudo-grid{args.grid}"
    summary = pseudo_instances(labeler, train_images, weak, pseudo, names)
    console.print(f"pseudo instances: {summary['instances']} on {summary['images']} images")
    pseudo_seconds = time.perf_counter() - started

    sizes = {"min_size": args.min_size, "max_size": args.max_size, "device": "cpu"}
    cfg = from_mapping(DetectorConfig, sizes | {"iterations": args.iterations})
    untrained = work / "det-untrained" / "detector.pt"
    if not untrained.exists():
        torch.manual_seed(cfg.seed)  # the retrained run's own initial weights
        model = build_detector(len(names), cfg)
        categories = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
        save_detector(untrained, model, len(names), {**sizes, "iterations": 0}, categories)
    tag = f"it{args.iterations}-{args.min_size}"
    nodrop = from_mapping(DetectorConfig, sizes | {"iterations": args.iterations, "roi_drop": "none"})
    gt = gt_coco(train_stems, work, names)
    runs = {}
    for name, root, split, out, run_cfg in (
        ("PGT, RoI drop", pseudo, "pseudo", work / f"det-pseudo-grid{args.grid}-{tag}", cfg),
        ("PGT, no drop", pseudo, "pseudo", work / f"det-pseudo-nodrop-grid{args.grid}-{tag}", nodrop),
        ("true boxes, RoI drop", gt, "train", work / f"det-gt-{tag}", cfg),
        ("true boxes, no drop", gt, "train", work / f"det-gt-nodrop-{tag}", nodrop),
    ):
        runs[name] = retrain_detector(run_cfg, root, split, out, quiet=False) | {"path": out / "detector.pt"}

    wsod, wsod_seconds = wsod_stage(labeler, val, names, work / f"wsod-stage-grid{args.grid}", console)
    rows = [
        ("untrained detector (random init, seed 0; baseline)", evaluate_detector(untrained, val, "cpu")),
        (
            f"WeakSAM detections before retraining (grid {args.grid} + CAM peaks, scorer cam; baseline)",
            evaluate_detections(val, wsod),
        ),
        (
            "WeakSAM pseudo ground truth (train images)",
            evaluate_detections(train, pgt_as_detections(pseudo, train, names)),
        ),
        *(
            (
                f"{'retrained on WeakSAM' if name.startswith('PGT') else 'trained on'} {name}, "
                f"{args.iterations} steps{' (reference)' if name.startswith('true') else ''}",
                evaluate_detector(r["path"], val, "cpu"),
            )
            for name, r in runs.items()
        ),
    ]
    table = report_table(rows)
    notes = [
        f"Engine: {engine.name}; Penn-Fudan train {len(train_stems)} images -> pseudo instances "
        f"({summary['instances']} boxes; {pseudo_seconds:.0f} s this run, 0 when resumed); WSOD stage on val "
        f"{wsod_seconds:.1f} s / image.",
        f"Detectors: Faster R-CNN MobileNetV3-Large FPN from random weights, min_size {args.min_size}, "
        f"max_size {args.max_size}, batch 2, SGD lr 0.01, {args.iterations} steps on the CPU; final loss / "
        "mean share of RoIs kept / training seconds: "
        + "; ".join(
            f"{name} {r['final_loss'] or float('nan'):.3f} / {r['mean_rois_kept'] or float('nan'):.0%} / "
            f"{r['seconds']:.0f}"
            for name, r in runs.items()
        )
        + ".",
    ]
    drop = first_step_drop(cfg, gt, "train")
    notes.append(
        f"RoI drop at the first step (initial weights, 2 train images, true boxes): the paper rule (tau_cls "
        f"{cfg.tau_cls}, tau_reg {cfg.tau_reg}) keeps {drop['positives_kept']:.0%} of the {drop['positives']} "
        f"positive RoIs and {drop['background_kept']:.0%} of the {drop['rois'] - drop['positives']} background "
        f"ones; the positives' median losses: classification {drop['positive_cls_median']:.2f}, regression "
        f"{drop['positive_reg_median']:.2f}."
    )
    text = "\n".join([table, "", *notes])
    console.print(text)
    atomic_write_text(
        args.out,
        "# WeakSAM's retrained detector on Penn-Fudan (benchmarks/weaksam_eval.py)\n\n"
        "AP50: pycocotools bbox AP at IoU 0.5; CorLoc: share of images whose top-scored pedestrian box "
        "has IoU >= 0.5 with a true one (one class). Percent.\n\n" + text + "\n",
    )
    save_json({label: r for label, r in rows}, Path(args.out).with_suffix(".json"))


if __name__ == "__main__":
    main()
