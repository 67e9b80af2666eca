"""WeakSAM's training side (paper 004): proposals for a folder, the WSOD head trained on them from
image tags, the pseudo instances (WSIS) written as a COCO dataset a student trains on, and the
Faster R-CNN retrained on the pseudo boxes under RoI drop.

`sesam weaksam proposals` -> `sesam weaksam train-wsod` -> `sesam weaksam instances` ->
`sesam train` (mode supervised-instance or wish, dataset coco, data_root = the instances folder);
`sesam weaksam retrain` on the same folder -> `detector.pt`, scored by `sesam weaksam eval`
(`training.weaksam_eval`) and usable as the pseudo boxes' source (`sesam weaksam instances
--detector`).

Every step is resumable: proposals are one JSON per image (skipped when present), the WSOD head
and the detector checkpoint `last.pt` atomically and continue from it with the same settings
(`iterations`, `checkpoint_every` and `device` may change), the instances step keeps one JSON per
image and assembles the COCO file at the end. The WSOD head and the detector train on `device`
(models are built on the CPU from the seed, then moved, so the random draws are the same
everywhere); both train in fp32 on every device.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.config import setting
from models.engine import PromptableSegmenter, read_image
from models.engine.validation import list_images
from models.io import atomic_write, encode_rle, save_json
from models.labels.schema import load_weak_labels
from models.labels.weaksam.labeler import WeakSAMLabeler
from models.labels.weaksam.proposals import ProposalOptions, weaksam_proposals
from models.runtime.device import DEVICE_HELP, check_device_name, resolve_device
from models.runtime.progress import progress_bar
from models.students.detector import faster_rcnn, image_tensor, save_detector
from models.students.semantic import normalize, pad_to_multiple
from models.students.wsod import SEED_RULES, WSODHead, save_wsod, wsod_losses

RESUME_FREE = ("iterations", "checkpoint_every", "device")  # settings a resumed run may change


def resume(
    last: Path, settings: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Restore `model` and `optimizer` from `last` when it exists (its settings must equal these but
    for `RESUME_FREE`, else the error names what changed); returns the first iteration to run."""
    if not last.exists():
        return 0
    state = torch.load(last, map_location="cpu", weights_only=True)
    changed = [k for k in settings if k not in RESUME_FREE and state["settings"].get(k) != settings[k]]
    if changed:
        raise ValueError(f"{last}: started with other settings ({', '.join(changed)}); use another --out")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["iteration"]) + 1


def save_state(
    last: Path,
    settings: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
) -> None:
    """The resume state, written atomically."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "iteration": iteration,
        "settings": settings,
    }
    atomic_write(last, lambda tmp: torch.save(payload, tmp))


def keep_measured(path: Path, summary: dict[str, Any], ran: bool) -> dict[str, Any]:
    """A rerun that had no step left keeps the measured fields (final loss, RoIs kept, seconds) of
    the summary it finds instead of writing nulls over them."""
    if ran or not path.exists():
        return summary
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return summary
    measured = ("final_loss", "mean_rois_kept", "seconds")
    return summary | {k: old[k] for k in measured if k in summary and old.get(k) is not None}


def _tags_of(weak_dir: Path, stem: str, size: tuple[int, int]) -> list[int]:
    weak = load_weak_labels(weak_dir, stem, size)
    if not weak.tags:
        raise ValueError(f"{weak_dir / stem}.json: no tags (WeakSAM learns from image tags)")
    return sorted(set(weak.tags))


def folder_proposals(
    engine: PromptableSegmenter,
    images: Path,
    weak: Path,
    out: Path,
    cam_predictor: Any | None,
    options: ProposalOptions,
    limit: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`out/<stem>.json` {boxes, scores, sources, tags} for every image (the first `limit`), and
    `out/summary.json`; an image whose proposals file exists is skipped (resume). Every image needs
    tags: one without stops the run with an error naming its weak-label file."""
    stems = list(list_images(images).items())[:limit]
    if not stems:
        raise ValueError(f"--images {images}: no images found")
    counts, started = [], time.perf_counter()
    with progress_bar("weaksam proposals", disable=quiet) as progress:
        task = progress.add_task("proposals", total=len(stems), info=getattr(engine, "name", ""))
        for stem, path in stems:
            target = out / f"{stem}.json"
            if target.exists():
                counts.append(len(json.loads(target.read_text())["boxes"]))
                progress.advance(task)
                continue
            image = read_image(path)
            tags = _tags_of(weak, stem, image.shape[:2])
            cams = cam_predictor(image) if cam_predictor is not None else None
            handle = engine.embed([image])[0]
            props = weaksam_proposals(engine, handle, cams, tags, options)
            record = {
                "tags": tags,
                "boxes": np.round(props.boxes, 2).tolist(),
                "scores": np.round(props.scores, 4).tolist(),
                "sources": props.sources,
            }
            save_json(record, target)
            counts.append(len(props))
            progress.update(task, advance=1, info=f"{stem}: {len(props)}")
    summary = {
        "images": len(stems),
        "mean_proposals": float(np.mean(counts)),
        "options": asdict(options),
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_json(summary, out / "summary.json")
    return summary


@dataclass
class WSODConfig:
    """The WSOD head's training (OICR / MIST on WeakSAM-proposals); sizes are budget choices for a CPU,
    not the paper's (VGG-16 OICR / MIST)."""

    student: str = setting("fpn-mobilenetv2", help="the backbone: a registered semantic student's encoder")
    refinements: int = setting(3, help="OICR refinement branches K (OICR's 3)")
    hidden: int = setting(256, help="width of the two FC layers on the RoI features")
    seed_rule: str = setting("oicr", help="refinement seeds: oicr (top-1) or mist (top 15 %, IoU < 0.2)")
    iterations: int = setting(300, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(2, help="images per step")
    lr: float = setting(1e-4, help="AdamW learning rate")
    weight_decay: float = setting(1e-4, help="AdamW weight decay")
    base_scale: float = setting(0.5, help="image scale for the backbone (proposals are scaled with it)")
    max_proposals: int = setting(300, help="proposals per image and step: a random subset beyond this")
    seed: int = setting(0, help="initial weights and image / proposal sampling")
    checkpoint_every: int = setting(50, help="write last.pt every N steps (and at the end)")
    device: str = setting("auto", help=DEVICE_HELP)

    def validate(self, source: str = "wsod settings") -> None:
        check_device_name(self.device, f"{source}: device")
        if self.seed_rule not in SEED_RULES:
            raise ValueError(f"{source}: seed_rule {self.seed_rule!r} unknown; choose one of {SEED_RULES}")
        if min(self.iterations, self.batch_size, self.max_proposals, self.checkpoint_every) < 1:
            raise ValueError(
                f"{source}: iterations, batch_size, max_proposals and checkpoint_every must be >= 1"
            )


def _scaled(image: np.ndarray, scale: float) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    if scale != 1.0:
        h, w = image.shape[:2]
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
    return x


def train_wsod(
    cfg: WSODConfig, images: Path, proposals: Path, out: Path, num_classes: int, quiet: bool = False
) -> dict[str, Any]:
    """Train the WSOD head on every image with a non-empty proposals file, on `cfg.device`; writes
    `out/wsod.pt` and `out/summary.json`.

    Resumes from `out/last.pt` when its settings equal `cfg` (else refuses, naming the change)."""
    cfg.validate()
    device = resolve_device(cfg.device)
    paths = list_images(images)
    records = {p.stem: json.loads(p.read_text()) for p in sorted(proposals.glob("*.json")) if p.stem in paths}
    records = {k: v for k, v in records.items() if v["boxes"]}
    if not records:
        raise ValueError(
            f"{proposals}: no proposal files for the images in {images} (run sesam weaksam proposals)"
        )
    bad = sorted({t for r in records.values() for t in r["tags"] if t >= num_classes})
    if bad:
        raise ValueError(f"{proposals}: tags {bad} are out of range for --num-classes {num_classes}")
    stems = sorted(records)
    pixels = {s: _scaled(read_image(paths[s]), cfg.base_scale) for s in stems}
    torch.manual_seed(cfg.seed)
    head = WSODHead(cfg.student, num_classes, cfg.refinements, cfg.hidden).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    last = out / "last.pt"
    settings = asdict(cfg) | {"num_classes": num_classes}
    start = resume(last, settings, head, optimizer)
    history, started = [], time.perf_counter()
    with progress_bar("train wsod", disable=quiet) as progress:
        task = progress.add_task("wsod", total=cfg.iterations, completed=start, info="")
        for it in range(start, cfg.iterations):
            rng = np.random.default_rng([cfg.seed, it])
            batch = [stems[i] for i in rng.choice(len(stems), min(cfg.batch_size, len(stems)), replace=False)]
            head.train()
            total = torch.zeros((), device=device)
            for stem in batch:
                rec = records[stem]
                boxes = torch.tensor(rec["boxes"], dtype=torch.float32)
                if len(boxes) > cfg.max_proposals:
                    boxes = boxes[torch.from_numpy(rng.choice(len(boxes), cfg.max_proposals, replace=False))]
                boxes = boxes.to(device)
                x, _ = pad_to_multiple(normalize(pixels[stem].to(device)))
                outputs = head(x, [boxes * cfg.base_scale])[0]
                terms = wsod_losses(outputs, boxes, rec["tags"], num_classes, cfg.seed_rule)
                total = total + terms["total"] / len(batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            history.append(float(total.detach()))
            progress.update(task, advance=1, info=f"loss {history[-1]:.3f}")
            if (it + 1) % cfg.checkpoint_every == 0 or it == cfg.iterations - 1:
                save_state(last, settings, head, optimizer, it)
    save_wsod(out / "wsod.pt", head, {"base_scale": cfg.base_scale, "seed_rule": cfg.seed_rule})
    summary = {
        "images": len(stems),
        "iterations": cfg.iterations,
        "resumed_at": start,
        "final_loss": history[-1] if history else None,
        "seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "settings": settings,
    }
    summary = keep_measured(out / "summary.json", summary, bool(history))
    save_json(summary, out / "summary.json")
    return summary


def pseudo_instances(
    labeler: WeakSAMLabeler,
    images: Path,
    weak: Path,
    out: Path,
    class_names: list[str],
    split: str = "pseudo",
    limit: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """WSIS: every image's PGT boxes -> SAM masks, as a COCO dataset at `out/annotations/
    instances_<split>.json` with the images linked (or copied) into `out/<split>/`.

    Category ids are class id + 1, named by `class_names`. Per-image results live in `out/.images/`
    (the resume state); the COCO file is assembled from them at the end. An image the labeler
    refuses (no tags, a tag out of range) is left out and named in the summary's `failures`."""
    stems = list(list_images(images).items())[:limit]
    if not stems:
        raise ValueError(f"--images {images}: no images found")
    state, image_dir = out / ".images", out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    with progress_bar("weaksam instances", disable=quiet) as progress:
        task = progress.add_task("instances", total=len(stems), info="")
        for stem, path in stems:
            target = state / f"{stem}.json"
            if not target.exists():
                try:
                    image = read_image(path)
                    weak_labels = load_weak_labels(weak, stem, image.shape[:2], len(class_names))
                    if not weak_labels.tags:
                        raise ValueError(f"{weak / stem}.json: no tags")
                    handle = labeler.engine.embed([image])[0]
                    masks, records = labeler.instances(image, handle, sorted(set(weak_labels.tags)))
                    h, w = image.shape[:2]
                    for rec, mask in zip(records, masks, strict=True):
                        rec["segmentation"] = encode_rle(mask)
                        rec["area"] = int(mask.sum())
                    save_json({"file_name": path.name, "height": h, "width": w, "instances": records}, target)
                except ValueError as exc:
                    failures[stem] = str(exc)
                    progress.console.print(f"[red]{stem}: {exc}")
            link = image_dir / path.name
            if target.exists() and not link.exists():
                try:
                    os.symlink(path.resolve(), link)
                except OSError:
                    shutil.copy2(path, link)
            progress.update(task, advance=1, info=stem)
    images_json, annotations = [], []
    for n, (stem, _) in enumerate(stems, start=1):
        target = state / f"{stem}.json"
        if not target.exists():
            continue
        rec = json.loads(target.read_text())
        images_json.append(
            {"id": n, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]}
        )
        for inst in rec["instances"]:
            x0, y0, x1, y1 = inst["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": int(inst["class_id"]) + 1,
                    "segmentation": inst["segmentation"],
                    "area": float(inst["area"]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                    "score": inst["score"],
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    coco = {"images": images_json, "annotations": annotations, "categories": categories}
    save_json(coco, out / "annotations" / f"instances_{split}.json")
    summary = {
        "images": len(images_json),
        "instances": len(annotations),
        "failed": len(failures),
        "failures": failures,
        "coco": str(out / "annotations" / f"instances_{split}.json"),
        "options": asdict(labeler.options),
        "engine": getattr(labeler.engine, "name", "?"),
    }
    save_json(summary, out / "summary.json")
    return summary


@dataclass
class DetectorConfig:
    """Retraining a torchvision Faster R-CNN on PGT boxes with RoI drop (WeakSAM's Sec. 3.2, Eq. 1-2);
    sizes and schedule are budget choices for a CPU (the paper trains a ResNet-50 Faster R-CNN
    with the fully supervised schedule, App. H)."""

    iterations: int = setting(500, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(2, help="images per step")
    lr: float = setting(0.01, help="SGD learning rate (momentum 0.9)")
    weight_decay: float = setting(1e-4, help="SGD weight decay")
    min_size: int = setting(320, help="Faster R-CNN's shorter image side")
    max_size: int = setting(512, help="Faster R-CNN's longer side cap")
    roi_drop: str = setting("paper", help="RoI drop rule: paper, code, or none")
    tau_cls: float = setting(4.0, help="RoI drop: classification-loss threshold (the paper's best)")
    tau_reg: float = setting(1.0, help="RoI drop: regression-loss threshold (the paper's best)")
    seed: int = setting(0, help="initial weights and image sampling")
    checkpoint_every: int = setting(50, help="write last.pt every N steps (and at the end)")
    device: str = setting("auto", help=DEVICE_HELP)

    def validate(self, source: str = "detector settings") -> None:
        check_device_name(self.device, f"{source}: device")
        if self.roi_drop not in ("paper", "code", "none"):
            raise ValueError(f"{source}: roi_drop {self.roi_drop!r} unknown; choose paper, code or none")
        if min(self.iterations, self.batch_size, self.checkpoint_every) < 1:
            raise ValueError(f"{source}: iterations, batch_size and checkpoint_every must be >= 1")


def build_detector(num_classes: int, cfg: DetectorConfig) -> torch.nn.Module:
    """Faster R-CNN (MobileNetV3-Large FPN, random weights: nothing is downloaded) with RoI drop,
    on the CPU (`models.students.detector.faster_rcnn`)."""
    from models.students.roi_drop import with_roi_drop

    model = faster_rcnn(num_classes, cfg.min_size, cfg.max_size)
    if cfg.roi_drop != "none":
        model = with_roi_drop(model, cfg.tau_cls, cfg.tau_reg, cfg.roi_drop)
    return model


def retrain_detector(
    cfg: DetectorConfig, coco_root: Path, split: str, out: Path, quiet: bool = False
) -> dict[str, Any]:
    """Train the detector on the boxes of `coco_root/annotations/instances_<split>.json` (category
    id c + 1 = class c, as `pseudo_instances` writes; boxes under 1 pixel wide or high are left
    out, `iscrowd` ones are not), on `cfg.device`; `out/detector.pt` (with the file's categories,
    so `sesam weaksam eval` matches classes by name) and `out/summary.json`, resumable from last.pt."""
    cfg.validate()
    device = resolve_device(cfg.device)
    path = coco_root / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise ValueError(f"{path}: no such COCO file (run sesam weaksam instances)")
    coco = json.loads(path.read_text())
    num_classes = max([c["id"] for c in coco["categories"]] or [1])
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    items = []
    for im in coco["images"]:
        anns = [a for a in by_image.get(im["id"], []) if a["bbox"][2] >= 1 and a["bbox"][3] >= 1]
        if anns:
            boxes = torch.tensor(
                [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32
            )
            labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
            items.append((coco_root / split / im["file_name"], boxes, labels))
    if not items:
        raise ValueError(f"{path}: no boxes to train on")
    torch.manual_seed(cfg.seed)
    model = build_detector(num_classes, cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    settings = asdict(cfg) | {"num_classes": num_classes, "coco": str(path)}
    last = out / "last.pt"
    start = resume(last, settings, model, optimizer)
    history, kept, started = [], [], time.perf_counter()
    model.train()
    with progress_bar("retrain detector", disable=quiet) as progress:
        task = progress.add_task("detector", total=cfg.iterations, completed=start, info="")
        for it in range(start, cfg.iterations):
            rng = np.random.default_rng([cfg.seed, it])
            chosen = [
                items[i] for i in rng.choice(len(items), min(cfg.batch_size, len(items)), replace=False)
            ]
            images = [image_tensor(read_image(p)).to(device) for p, _, _ in chosen]
            targets = [{"boxes": b.to(device), "labels": lab.to(device)} for _, b, lab in chosen]
            losses = model(images, targets)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            history.append(float(total.detach()))
            kept.append(getattr(model.roi_heads, "last_kept_fraction", 1.0))
            progress.update(task, advance=1, info=f"loss {history[-1]:.3f} RoIs kept {kept[-1]:.0%}")
            if (it + 1) % cfg.checkpoint_every == 0 or it == cfg.iterations - 1:
                save_state(last, settings, model, optimizer, it)
    categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in coco["categories"]]
    save_detector(out / "detector.pt", model, num_classes, settings, categories)
    summary = {
        "images": len(items),
        "iterations": cfg.iterations,
        "resumed_at": start,
        "final_loss": history[-1] if history else None,
        "mean_rois_kept": float(np.mean(kept)) if kept else None,
        "seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "settings": settings,
    }
    summary = keep_measured(out / "summary.json", summary, bool(history))
    save_json(summary, out / "summary.json")
    return summary
