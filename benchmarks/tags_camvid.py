"""Image tags -> labels, measured: CAM pseudo-labels alone vs enhanced by SEPL, and WeakSAM's
proposal recall against a low-level proposal baseline.

Part 1 (CamVid, semantic, tags derived from the dense labels): for each CAM checkpoint of `--cams`
(each a "CAM method"; a semantic student checkpoint stands in for a good CAM, its softmax
scores as the maps), the CAM pseudo-labels (`models.students.cam.cam_pseudo_labels`) alone -- the
baseline -- and after SEPL with each of its rules (paper, authors, keep_pseudo) on the same
automatic masks of the engine (default: the weight-free classical prior). mIoU over the 11
classes with unlabeled pixels counted wrong, the share of labelled pixels, and the pixel accuracy
of the labelled pixels. The paper's claim (SEPL, paper 001): SEPL raises every CAM method.
`--split train` sweeps the CAM threshold (the setting is chosen there); val only reports.

Part 2 (Penn-Fudan val, instances): WeakSAM-proposals (grid prompts of several densities, plus
CAM-peak prompts of the class `pedestrian`) vs Felzenszwalb segments at three scales as boxes
(the low-level regions Selective Search starts from; selective search itself is not installed):
mean proposals per image and recall of the ground-truth instance boxes at IoU 0.5 and 0.75. The
paper: 213 WeakSAM proposals, 95.6 recall vs ~2000 Selective Search boxes.

Run: `python benchmarks/tags_camvid.py [--split val] [--limit N] [--part 1|2|both]`; writes
benchmarks/results/tags_camvid.md. Per-image results are cached under runs/bench_tags/ so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from tables import markdown_table

from models.engine import EngineConfig, build_engine, read_image
from models.io import atomic_write_text, load_checkpoint, read_label_png, save_json
from models.labels import backend_defaults, build_labeler
from models.labels.common import RefineResult
from models.labels.weaksam.proposals import ProposalOptions, weaksam_proposals
from models.students.cam import CamPredictor, cam_pseudo_labels
from training.datasets import CamVid, PennFudan
from training.metrics import ConfusionMatrix
from training.protocols import class_ids_present

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RULES = ("paper", "authors", "keep_pseudo")
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
PEDESTRIAN = 9  # CamVid's class id of pedestrians: the CamVid CAM's peaks on Penn-Fudan


def fmt(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


class Score:
    """mIoU (unlabeled = wrong), labelled share and accuracy of the labelled pixels."""

    def __init__(self) -> None:
        self.conf = ConfusionMatrix(11, 255)
        self.labelled = self.valid = self.correct = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.conf.update(pred, gt)
        valid = gt != 255
        named = valid & (pred != 255)
        self.valid += int(valid.sum())
        self.labelled += int(named.sum())
        self.correct += int((named & (pred == gt)).sum())

    def row(self) -> list[str]:
        acc = self.correct / self.labelled if self.labelled else float("nan")
        return [fmt(self.conf.miou()), fmt(self.labelled / max(self.valid, 1)), fmt(acc)]


class StudentScores:
    """A stand-in for a good CAM: a semantic student's softmax scores at the image size (the shipped
    CamVid student learned from scribbles, not tags: it shows what SEPL does with a map that has
    signal, not what tags alone give)."""

    def __init__(self, path: str, threshold: float = 0.5) -> None:
        from models.students.semantic import load_student

        self.model, meta = load_student(path)
        self.base_scale = float(meta.get("base_scale", 1.0))
        self.threshold = threshold

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        from models.students.semantic import predict_logits

        h, w = image.shape[:2]
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        size = (round(h * self.base_scale), round(w * self.base_scale))
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        logits = predict_logits(self.model, x)
        return torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[
            0
        ].softmax(0)


def load_maps(path: str):
    """A CAM checkpoint (mode cam) or, as a stand-in for a good CAM, a semantic student checkpoint."""
    kind = load_checkpoint(path, ("cam", "semantic_student"), "CAM or student checkpoint").kind
    return CamPredictor.from_checkpoint(path) if kind == "cam" else StudentScores(path)


def part1(args, console: Console) -> list[str]:
    camvid = CamVid(DATA / "camvid", args.split)
    samples = camvid.samples()[: args.limit]
    engine = build_engine(EngineConfig(backend=args.backend))
    lines = []
    for cam_path in args.cams:
        cams = load_maps(cam_path)
        cache = ROOT / "runs" / "bench_tags" / f"{Path(cam_path).stem}-{args.split}-{engine.name}"
        if args.split == "train":  # choose the threshold: CAM alone over thresholds
            scores = {t: Score() for t in THRESHOLDS}
            for s in track(samples, description=f"threshold sweep {Path(cam_path).name}", console=console):
                gt = read_label_png(s.label)
                gt = np.where(gt == camvid.ignore_index, 255, gt).astype(np.uint8)
                cam = cams(read_image(s.image))
                for t in THRESHOLDS:
                    scores[t].update(cam_pseudo_labels(cam, class_ids_present(gt, None), t), gt)
            head = ["CAM", "threshold", "mIoU", "labelled %", "labelled acc"]
            rows = [[Path(cam_path).name, str(t), *sc.row()] for t, sc in scores.items()]
            lines += [*markdown_table(head, rows), ""]
            continue
        labeler = build_labeler(
            "sepl", engine, **backend_defaults("sepl", engine.name, {"cam": str(cam_path)})
        )
        threshold = args.thresholds.get(Path(cam_path).name, cams.threshold)
        results = {"cam": Score()} | {r: Score() for r in RULES}
        seconds = []
        for s in track(samples, description=f"CAM / SEPL {Path(cam_path).name}", console=console):
            gt = read_label_png(s.label)
            gt = np.where(gt == camvid.ignore_index, 255, gt).astype(np.uint8)
            tags = class_ids_present(gt, None)
            out = cache / f"{s.stem}-t{threshold}.npz"
            if out.exists():
                maps = dict(np.load(out))
            else:
                image = read_image(s.image)
                pseudo = cam_pseudo_labels(cams(image), tags, threshold)
                t0 = time.perf_counter()
                masks = labeler.automatic_masks(engine.embed([image])[0], RefineResult(np.empty(0)))
                empty = np.full(gt.shape, 255, np.uint8)
                maps = {"cam": pseudo} | {r: labeler.enhance(masks, pseudo, empty, r)[0] for r in RULES}
                maps["seconds"] = np.asarray(time.perf_counter() - t0)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp.npz")
                np.savez_compressed(tmp, **maps)
                tmp.replace(out)
            seconds.append(float(maps.pop("seconds")))
            for name, sc in results.items():
                sc.update(maps[name], gt)
        head = ["CAM", "labels", "mIoU", "labelled %", "labelled acc", "vs CAM alone (mIoU)"]
        base = results["cam"].conf.miou()
        names = {"cam": "CAM alone (baseline)"} | {r: f"CAM + SEPL ({r})" for r in RULES}
        rows = [
            [
                Path(cam_path).name,
                names[k],
                *sc.row(),
                "-" if k == "cam" else f"{100 * (sc.conf.miou() - base):+.1f}",
            ]
            for k, sc in results.items()
        ]
        lines += [*markdown_table(head, rows), ""]
        per_class = [[names[k], *[fmt(v) for v in sc.conf.iou_per_class()]] for k, sc in results.items()]
        lines += [*markdown_table(["per-class IoU", *camvid.class_names], per_class), ""]
        lines.append(f"SEPL's automatic masks: {np.mean(seconds):.1f} s per image ({engine.name}).")
        lines.append("")
    return lines


def box_recall(gt: np.ndarray, boxes: np.ndarray, iou: float) -> tuple[int, int]:
    from torchvision.ops import box_iou

    if len(gt) == 0:
        return 0, 0
    if len(boxes) == 0:
        return 0, len(gt)
    best = box_iou(torch.as_tensor(gt, dtype=torch.float32), torch.as_tensor(boxes, dtype=torch.float32)).max(
        1
    )
    return int((best.values >= iou).sum()), len(gt)


def felzenszwalb_boxes(image: np.ndarray) -> np.ndarray:
    """Boxes of Felzenszwalb segments at three scales (Selective Search's starting regions)."""
    from skimage.segmentation import felzenszwalb

    boxes = []
    for scale in (100, 300, 1000):
        seg = felzenszwalb(image, scale=scale, sigma=0.8, min_size=50)
        for label in np.unique(seg):
            ys, xs = np.nonzero(seg == label)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.unique(np.asarray(boxes, np.float32), axis=0)


def part2(args, console: Console) -> list[str]:
    ds = PennFudan(DATA / "pennfudan", "val")
    samples = ds.samples()[: args.limit]
    engine = build_engine(EngineConfig(backend=args.backend))
    cams = CamPredictor.from_checkpoint(args.cams[0])  # the first --cams: a CAM checkpoint
    methods: dict[str, tuple[ProposalOptions | None, bool]] = {
        "Felzenszwalb boxes, 3 scales (baseline)": (None, False),
        **{f"WeakSAM grid {n}x{n}": (ProposalOptions(points_per_side=n), False) for n in args.grids},
        f"WeakSAM grid {args.grids[-1]}x{args.grids[-1]} + CAM peaks": (
            ProposalOptions(points_per_side=args.grids[-1]),
            True,
        ),
    }
    cache = ROOT / "runs" / "bench_tags" / f"pennfudan-{engine.name}"
    stats = {m: {"n": [], "r50": [0, 0], "r75": [0, 0], "s": []} for m in methods}
    for s in track(samples, description="proposals", console=console):
        image = read_image(s.image)
        gt = np.asarray(
            [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in (np.nonzero(m) for m in s.masks)]
        )
        handle = None
        for name, (options, peaks) in methods.items():
            path = cache / f"{s.stem}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.json"
            if path.exists():
                rec = json.loads(path.read_text())
            else:
                t0 = time.perf_counter()
                if options is None:
                    boxes = felzenszwalb_boxes(image)
                else:
                    handle = handle or engine.embed([image])[0]
                    cam = cams(image) if peaks else None
                    boxes = weaksam_proposals(
                        engine, handle, cam, [PEDESTRIAN] if peaks else [], options
                    ).boxes
                rec = {"boxes": np.round(boxes, 1).tolist(), "seconds": time.perf_counter() - t0}
                save_json(rec, path)
            boxes = np.asarray(rec["boxes"], np.float32).reshape(-1, 4)
            st = stats[name]
            st["n"].append(len(boxes))
            st["s"].append(rec["seconds"])
            for key, iou in (("r50", 0.5), ("r75", 0.75)):
                hit, total = box_recall(gt, boxes, iou)
                st[key][0] += hit
                st[key][1] += total
    head = ["proposals", "per image", "recall @0.5", "recall @0.75", "s / image"]
    rows = [
        [
            name,
            f"{np.mean(st['n']):.0f}",
            fmt(st["r50"][0] / max(st["r50"][1], 1)),
            fmt(st["r75"][0] / max(st["r75"][1], 1)),
            f"{np.mean(st['s']):.2f}",
        ]
        for name, st in stats.items()
    ]
    return [*markdown_table(head, rows), ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--part", default="both", choices=["1", "2", "both"])
    p.add_argument(
        "--cams", nargs="+", default=[str(ROOT / "models" / "students" / "weights" / "camvid_cam.pt")]
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="FILE=T",
        help="background threshold of a --cams file (default: the CAM checkpoint's, chosen on train; 0.5 for a student)",
    )
    p.add_argument("--backend", default="classical")
    p.add_argument("--grids", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tags_camvid.md"))
    args = p.parse_args()
    args.thresholds = {k: float(v) for k, _, v in (t.partition("=") for t in args.threshold)}
    console = Console()
    lines = [
        f"Engine: {args.backend} (weight-free; no SAM weights here). Split: {args.split}, images: {args.limit or 'all'}.",
        "",
    ]
    if args.part in ("1", "both"):
        lines += ["## CamVid: pseudo-labels from tags only", "", *part1(args, console)]
    if args.part in ("2", "both") and args.split == "val":
        lines += ["## Penn-Fudan val: proposal recall", "", *part2(args, console)]
    text = "\n".join(lines)
    console.print(text)
    if args.split == "val":
        atomic_write_text(args.out, "# Tags to labels (benchmarks/tags_camvid.py)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
