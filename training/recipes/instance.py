"""Instance students: wish | supervised-instance, on the shared training loop.

- supervised-instance: Mask2Former on dense instance masks (classification + mask matching and
  losses, deep supervision): the upper bound, same model and data.
- wish (paper 002): every training image carries one kind of weak label (tags, points or boxes;
  `labels`, or a mix within a budget, Eq. 21). Targets per point / box: the prompt latent Z (SAM's
  prompt encoder, Eq. 9) and SAM's three candidates; tags become points from the CAM's peaks
  (Sec. 4.3), refreshed every `sam_every` iterations after the warm-up. Loss L_seg + L_cam + L_self
  (Eq. 20, `training.wish`), only L_cam during the warm-up.

SAM in the loop never re-encodes: every weakly labelled image is embedded once, up front; point and
box candidates are decoded then, tags -> points only runs the decoder (asserted after training).
Images are letterboxed to `input_side` (the longer side), zero-padded to a square (content top-left,
as at inference), and flipped at random within their content, so a flipped portrait image stays
top-left; targets are kept on that canvas, prompt latents for both orientations (a point x becomes
W - x in the image's own frame). Targets live in host memory and go to the device with their batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import from_mapping, load, read_yaml, setting
from models.engine import Prompt, build_engine
from models.engine.prompt_latents import PromptLatents
from models.labels.schema import WeakLabels, load_weak_labels
from models.labels.wish_tags import TagPointOptions, tags_to_points
from models.runtime.device import (
    AMP_CHOICES,
    AMP_HELP,
    DEVICE_HELP,
    Precision,
    check_device_name,
    resolve_device,
    to_device,
)
from models.students.instance import (
    InstanceSegmenter,
    build_instance_student,
    instance_student_registry,
    letterbox,
    save_instance_student,
    torch_instance_forward,
)
from training.budget import INSTANCE_KINDS, assign_label_kinds, derive_instance_labels, homogeneous_counts
from training.data import batch_indices
from training.datasets import CamVidThings, CocoInstances, InstanceFolder, InstanceSample, PennFudan
from training.embedded import EmbeddedImages, check_reencoding, engine_config
from training.loop import LR_SCHEDULES, ddp_wrap
from training.metrics import coco_mask_ap
from training.wish import Targets, Weights, cam_loss, match, seg_loss, self_loss

INSTANCE_MODES = ("wish", "supervised-instance")
DATASETS = ("pennfudan", "camvid-things", "coco", "folder")
LABELS = (*INSTANCE_KINDS, "mix")
ENV_PREFIX = "SESAM_TRAIN_"
_WISH = frozenset({"wish"})
READ_BY = {
    **dict.fromkeys(
        (
            "labels",
            "budget",
            "label_counts",
            "label_seed",
            "train_weak",
            "engine",
            "w_prompt",
            "w_cam",
            "w_self",
            "use_prompt",
            "use_self",
            "sam_level",
            "prompt_temperature",
            "warmup_iterations",
            "sam_every",
            "tag_points",
            "prompt_encoder_seed",
        ),
        _WISH,
    ),
}


@dataclass
class InstanceTrainConfig:
    """Everything one instance training run reads (YAML, SESAM_TRAIN_* environment, --set key=value)."""

    MOVED_SETTINGS: ClassVar[dict[str, str]] = {}

    mode: str = setting("wish", help=f"one of {', '.join(INSTANCE_MODES)}")
    student: str = setting("m2f-r18", help=f"one of {', '.join(sorted(instance_student_registry))}")
    # data
    dataset: str = setting("pennfudan", help=f"one of {', '.join(DATASETS)}")
    data_root: str | None = setting(None, help="the dataset's folder (coco: the folder with annotations/)")
    train_split: str | None = setting(None, help="train split (default: train; coco: train2017)")
    val_split: str | None = setting(None, help="val split (default: val; coco: val2017)")
    val_root: str | None = setting(
        None, help="folder dataset: the validation folder (instance-id PNG layout); none: no validation"
    )
    tiles: int = setting(1, help="camvid-things: cut each image into tiles x tiles samples")
    min_area: int = setting(50, help="camvid-things: smallest connected component that is an instance (px)")
    train_limit: int | None = setting(None, help="only the first N training images")
    val_limit: int | None = setting(None, help="only the first N validation images")
    # weak labels (wish)
    labels: str = setting("points", help="wish: tags, points, boxes (every image) or mix (label_counts)")
    budget: int | None = setting(None, help="wish: annotation budget zeta in tag units (Eq. 21, 1:6:12)")
    label_counts: list[int] | None = setting(None, help="wish, labels=mix: images with (tags, points, boxes)")
    label_seed: int = setting(0, help="wish: seed of the label protocols and of the budget assignment")
    train_weak: str | None = setting(
        None, help="wish: folder of <stem>.json weak labels (schema v2, instances: true) instead of protocols"
    )
    # optimisation
    iterations: int = setting(1000, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(4, help="images per step (split across DDP ranks)")
    lr: float = setting(1e-4, help="AdamW learning rate (Mask2Former's)")
    lr_schedule: str = setting(
        "constant", help="`constant`, or `poly` (lr (1 - t/T)^0.9 after a linear warm-up; DeepLab's schedule)"
    )
    lr_warmup: int = setting(0, help="poly: linear learning-rate warm-up steps from lr/100 to lr")
    weight_decay: float = setting(0.05, help="AdamW weight decay (Mask2Former's)")
    input_side: int = setting(320, help="the longer image side on the canvas (a multiple of 32)")
    hflip: bool = setting(True, help="random horizontal flips")
    seed: int = setting(0, help="initial weights, batches and flips")
    device: str = setting(
        "auto", help=f"where the student, its heads, losses and SAM run: {DEVICE_HELP} (docs/training.md)"
    )
    amp: str = setting("auto", help=AMP_HELP)
    deep_supervision: bool = setting(True, help="losses on every decoder layer's prediction (Mask2Former)")
    w_class: float = setting(2.0, help="alpha: class weight in the matching cost and the loss (Eq. 14)")
    w_mask: float = setting(5.0, help="gamma: mask BCE and dice weight (Eq. 14)")
    w_prompt: float = setting(5.0, help="beta: prompt KLD weight (Eq. 14)")
    no_object_weight: float = setting(0.1, help="cross-entropy weight of 'no object' (Mask2Former)")
    w_cam: float = setting(1.0, help="wish: weight of L_cam (Eq. 20)")
    w_self: float = setting(1.0, help="wish: weight of L_self (Eq. 20)")
    use_prompt: bool = setting(True, help="wish: the prompt head's cost and loss (ablation: false)")
    use_self: bool = setting(True, help="wish: L_self (ablation: false)")
    sam_level: str = setting("min", help="wish: 'min' over SAM's 3 candidates (Eq. 13) or a fixed 1, 2, 3")
    prompt_temperature: float = setting(1.0, help="wish: softmax temperature of the prompt KLD")
    match_points: int = setting(1024, help="points sampled per image for the matching cost")
    loss_points: int = setting(1024, help="points sampled per mask for the mask loss")
    warmup_iterations: int = setting(100, help="wish: only L_cam for the first N iterations")
    sam_every: int = setting(4, help="wish: refresh tags -> points from the CAM every M iterations")
    tag_points: dict[str, Any] = setting(
        {}, help="wish: tags -> points (peak_kernel, peak_threshold, merge_iou)"
    )
    prompt_encoder_seed: int = setting(
        0, help="wish: seed of the random prompt encoder (engines without SAM)"
    )
    engine: dict[str, Any] = setting(
        {"backend": "classical", "cache_bytes": 4 * 1024**3}, help="wish: the engine (see the engine table)"
    )
    # evaluation and bookkeeping
    top_k: int = setting(20, help="instances kept per validation image")
    out_dir: str = setting("runs/train-instance", help="checkpoints, metrics.csv, summary.json, student.pt")
    eval_every: int = setting(500, help="validate every N iterations (and at the end)")
    checkpoint_every: int = setting(100, help="write last.pt every N iterations (and at the end)")
    log_every: int = setting(10, help="a metrics.csv row every N iterations")
    resume: bool = setting(True, help="continue from out_dir/last.pt when it exists")
    quiet: bool = setting(False, help="no progress bars")

    def validate(self, source: str = "training config") -> None:
        if self.mode not in INSTANCE_MODES:
            raise ValueError(f"{source}: mode {self.mode!r} unknown; choose one of {INSTANCE_MODES}")
        if self.student not in instance_student_registry:
            raise ValueError(
                f"{source}: student {self.student!r} unknown; choose one of {sorted(instance_student_registry)}"
            )
        if self.dataset not in DATASETS:
            raise ValueError(f"{source}: dataset {self.dataset!r} unknown; choose one of {DATASETS}")
        if not self.data_root:
            raise ValueError(f"{source}: data_root is required (the {self.dataset} folder)")
        if self.labels not in LABELS:
            raise ValueError(f"{source}: labels {self.labels!r} unknown; choose one of {LABELS}")
        if self.labels == "mix" and self.label_counts is None and self.train_weak is None:
            raise ValueError(f"{source}: labels=mix needs label_counts [N_tags, N_points, N_boxes]")
        if self.label_counts is not None and len(self.label_counts) != 3:
            raise ValueError(
                f"{source}: label_counts {self.label_counts} must be 3 numbers (tags, points, boxes)"
            )
        if self.sam_level not in ("min", "1", "2", "3"):
            raise ValueError(f"{source}: sam_level {self.sam_level!r} must be min, 1, 2 or 3")
        if self.input_side % 32 or self.input_side < 64:
            raise ValueError(f"{source}: input_side {self.input_side} must be a multiple of 32, >= 64")
        if self.iterations < 1 or self.batch_size < 1 or self.sam_every < 1 or self.warmup_iterations < 0:
            raise ValueError(f"{source}: iterations, batch_size, sam_every must be >= 1, warmup >= 0")
        if not self.lr > 0 or not self.weight_decay >= 0:  # NaN fails too
            raise ValueError(
                f"{source}: lr must be > 0 and weight_decay >= 0; got {self.lr}, {self.weight_decay}"
            )
        if self.lr_schedule not in LR_SCHEDULES or self.lr_warmup < 0:
            raise ValueError(
                f"{source}: lr_schedule {self.lr_schedule!r} must be one of {LR_SCHEDULES}, lr_warmup >= 0"
            )
        check_device_name(self.device, f"{source}: device")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"{source}: amp {self.amp!r} unknown; choose one of {AMP_CHOICES}")
        from_mapping(TagPointOptions, self.tag_points, f"{source}: tag_points")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> InstanceTrainConfig:
        return from_mapping(cls, values, source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> InstanceTrainConfig:
        return load(
            cls, yaml_values=read_yaml(path), prefix=ENV_PREFIX, overrides=overrides or (), source=str(path)
        )


# -- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceData:
    samples: list[InstanceSample]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]


def load_split(cfg: InstanceTrainConfig, train: bool) -> InstanceData:
    """The train or val split the config names (splits are documented per dataset class)."""
    root, limit = Path(cfg.data_root), cfg.train_limit if train else cfg.val_limit
    split = cfg.train_split if train else cfg.val_split
    if cfg.dataset == "pennfudan":
        ds = PennFudan(root, split or ("train" if train else "val"))
        samples, names, ids = ds.samples(), ds.class_names, (1,)
    elif cfg.dataset == "camvid-things":
        ds = CamVidThings(
            root, split or ("train" if train else "val"), cfg.min_area, cfg.tiles if train else 1
        )
        samples, names = ds.samples(limit), ds.class_names
        ids = tuple(range(1, len(names) + 1))
    elif cfg.dataset == "coco":
        ds = CocoInstances(root, split or ("train2017" if train else "val2017"))
        samples, names, ids = ds.samples(), ds.class_names, ds.category_ids
    else:
        if not train and cfg.val_root is None:  # no validation folder: no validation (never train images)
            return InstanceData([], (), ())
        samples = InstanceFolder(root if train else Path(cfg.val_root)).samples()
        count = max([c + 1 for s in samples for c in s.class_ids] or [1])
        names, ids = tuple(f"class_{i}" for i in range(count)), tuple(range(1, count + 1))
    return InstanceData(samples[:limit], tuple(names), tuple(ids))


@dataclass
class Item:
    """One training image on the canvas. `targets[flip]`: fixed targets (points, boxes, masks) per
    orientation, None for tags (their targets come from the CAM)."""

    stem: str
    image: torch.Tensor  # 3xSxS normalised, content top-left
    scale: float  # canvas pixels per original pixel
    size: tuple[int, int]  # original (H, W)
    content: tuple[int, int]  # (h, w) of the image on the canvas (the rest is padding)
    kind: str  # tags | points | boxes | masks
    tags: list[int]
    weak: WeakLabels | None = None
    targets: list[Targets | None] = field(default_factory=lambda: [None, None])


def to_canvas(masks: np.ndarray, scale: float, side: int) -> torch.Tensor:
    """...xHxW bool at original size -> ...xSxS bool on the canvas (nearest; padding False)."""
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    sh, sw = min(side, max(1, round(h * scale))), min(side, max(1, round(w * scale)))
    flat = torch.from_numpy(np.ascontiguousarray(masks)).reshape(-1, 1, h, w)
    out = torch.zeros(flat.shape[0], side, side, dtype=torch.bool)
    if flat.shape[0]:
        out[:, :sh, :sw] = F.interpolate(flat.float(), size=(sh, sw), mode="nearest")[:, 0] > 0.5
    return out.reshape(*lead, side, side)


def flip_content(t: torch.Tensor, width: int) -> torch.Tensor:
    """...xSxS canvas(es) flipped left-right within the content's first `width` columns; the padding
    stays on the right, where inference has it."""
    out = t.clone()
    out[..., :width] = t[..., :width].flip(-1)
    return out


def flip_points(xy: np.ndarray, width: int) -> np.ndarray:
    out = np.array(xy, dtype=np.float64).reshape(-1, 2)
    out[:, 0] = width - out[:, 0]
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1)


class InstanceRecipe:
    """The instance task in any of `INSTANCE_MODES` (see the module docstring)."""

    read_by = READ_BY
    loss_terms = ("total", "cls", "bce", "dice", "prompt", "cam", "self")
    score_name = "val_ap"

    def __init__(self, cfg: InstanceTrainConfig, rank: int, world: int, progress) -> None:
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.progress = progress
        self.out = Path(cfg.out_dir)
        self.train = load_split(cfg, train=True)
        self.val = load_split(cfg, train=False)
        self.num_classes = len(self.train.class_names)
        self.device = resolve_device(cfg.device)
        self.precision = Precision(self.device, cfg.amp)
        torch.manual_seed(cfg.seed)
        self.model = build_instance_student(cfg.student, self.num_classes).to(self.device)
        self._forward_model: nn.Module = ddp_wrap(self.model, self.device, find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.weights = Weights(cfg.w_class, cfg.w_prompt, cfg.w_mask, cfg.no_object_weight)
        self.tag_options = from_mapping(TagPointOptions, cfg.tag_points, "tag_points")
        self.level = None if cfg.sam_level == "min" else int(cfg.sam_level) - 1
        self.items: list[Item] = []
        self.engine = None
        self.embedded: EmbeddedImages | None = None  # tag images (refreshed from the CAM in the loop)
        self._samples: list[InstanceSample] = []  # item -> its sample (to re-read an evicted image)
        self.latents: PromptLatents | None = None
        self.tag_instances: dict[int, dict[str, torch.Tensor]] = {}  # item -> points, classes, masks
        self._tag_latents: dict[int, list[torch.Tensor]] = {}  # item -> Z of its tag points, per flip
        self._encoder_calls_after_prepare = 0
        self._val_gt: dict[str, Any] | None = None
        self._val_images: list[np.ndarray] = []

    # -- labels and targets ----------------------------------------------------------------------
    def label_kinds(self) -> list[str | None]:
        """Each training image's weak-label kind (None: not labelled, not trained on)."""
        c, n = self.cfg, len(self.train.samples)
        if c.mode == "supervised-instance":
            return ["masks"] * n
        if c.train_weak is not None:
            return [None] * n  # read from the files in prepare()
        if c.labels == "mix":
            return assign_label_kinds(n, c.label_counts, c.budget, c.label_seed)
        if c.budget is None:
            return [c.labels] * n
        return assign_label_kinds(n, homogeneous_counts(c.labels, c.budget), c.budget, c.label_seed)

    def _weak_for(self, sample: InstanceSample, kind: str | None) -> tuple[str | None, WeakLabels | None]:
        c = self.cfg
        if c.train_weak is not None:
            weak = load_weak_labels(c.train_weak, sample.stem, sample.size, self.num_classes)
            if not weak.instances:
                raise ValueError(
                    f"{Path(c.train_weak) / (sample.stem + '.json')}: WISH needs instance labels (schema "
                    'version 2 with "instances": true: one point or box per object, complete tags)'
                )
            kind = "boxes" if weak.boxes else "points" if weak.points else "tags" if weak.tags else None
            return kind, weak
        if kind is None or kind == "masks":
            return kind, None
        return kind, derive_instance_labels(
            kind, sample.masks, sample.class_ids, sample.size, c.label_seed, sample.stem
        )

    def prepare(self) -> None:
        """Canvas every labelled image; for wish embed each once and decode its point / box prompts."""
        if self.items:
            return
        c, side = self.cfg, self.cfg.input_side
        if c.mode == "wish":
            self.engine = build_engine(engine_config(c.engine, self.device))
            self.latents = PromptLatents.for_engine(self.engine, c.prompt_encoder_seed)
            self.embedded = EmbeddedImages(self.engine, lambda i: self._samples[i].load_image())
        kinds = self.label_kinds()
        with self.progress("prepare training images") as progress:
            task = progress.add_task(
                "prepare", total=len(kinds), info=self.engine.name if self.engine else ""
            )
            for sample, kind in zip(self.train.samples, kinds):
                progress.advance(task)
                kind, weak = self._weak_for(sample, kind)
                if kind is None:
                    continue
                image = sample.load_image()
                x, content = letterbox(torch.from_numpy(image), side)
                canvas = torch.zeros(3, side, side)
                canvas[:, : x.shape[1], : x.shape[2]] = x
                h, w = image.shape[:2]
                scale = side / max(h, w)
                tags = (
                    sorted(set(sample.class_ids)) if weak is None else sorted(weak.tags or weak.class_ids())
                )
                item = Item(sample.stem, canvas, scale, (h, w), content, kind, tags, weak)
                cw = item.content[1]
                if kind == "masks":
                    masks = to_canvas(
                        np.stack(sample.masks) if sample.masks else np.zeros((0, h, w), bool), scale, side
                    )
                    classes = torch.as_tensor(sample.class_ids, dtype=torch.long)
                    item.targets = [
                        Targets(classes, None, masks[:, None]),
                        Targets(classes, None, flip_content(masks, cw)[:, None]),
                    ]
                elif kind in ("points", "boxes"):  # decoded once here; the embedding is not kept
                    item.targets = self._fixed_targets(item, self.engine.embed([image])[0])
                else:
                    self.embedded.embed([len(self.items)], [image])
                self._samples.append(sample)
                self.items.append(item)
            note = self.embedded.budget_note() if self.embedded is not None else None
            if note and self.rank == 0:
                progress.console.print(f"[yellow]{note}")
        if not self.items:
            raise ValueError("no training image carries a label (check labels, budget and label_counts)")
        if self.engine is not None:
            self._encoder_calls_after_prepare = self.engine.stats.encoder_calls

    def _fixed_targets(self, item: Item, handle) -> list[Targets | None]:
        """Targets of a point / box image in both orientations: Z and SAM's 3 candidates."""
        weak, (h, w), side = item.weak, item.size, self.cfg.input_side
        if item.kind == "points":
            xy = np.array([[p.x, p.y] for p in weak.points]).reshape(-1, 2)
            classes = [p.class_id for p in weak.points]
            prompts = [Prompt(points=p[None], labels=np.ones(1, int)) for p in xy]
            z = [self.latents.points(xy, (h, w)), self.latents.points(flip_points(xy, w), (h, w))]
        else:
            boxes = np.array([b.box for b in weak.boxes]).reshape(-1, 4)
            classes = [b.class_id for b in weak.boxes]
            prompts = [Prompt(box=b) for b in boxes]
            z = [self.latents.boxes(boxes, (h, w)), self.latents.boxes(flip_boxes(boxes, w), (h, w))]
        if not prompts:
            return [None, None]
        masks = to_canvas(self.engine.predict(handle, prompts, multimask=True).masks, item.scale, side)
        cls = torch.as_tensor(classes, dtype=torch.long)
        return [Targets(cls, z[0], masks), Targets(cls, z[1], flip_content(masks, item.content[1]))]

    def _tag_targets(self, index: int, flip: bool) -> Targets | None:
        found = self.tag_instances.get(index)
        if found is None or len(found["classes"]) == 0:
            return None
        if index not in self._tag_latents:  # once per refresh, not per step: both orientations
            h, w = self.items[index].size
            xy = found["points"].numpy()
            self._tag_latents[index] = [
                self.latents.points(xy, (h, w)),
                self.latents.points(flip_points(xy, w), (h, w)),
            ]
        masks = flip_content(found["masks"], self.items[index].content[1]) if flip else found["masks"]
        return Targets(found["classes"], self._tag_latents[index][int(flip)], masks)

    @torch.no_grad()
    def _refresh_tags(self, indices: list[int], flips: list[bool], cam: torch.Tensor) -> None:
        """Tags -> points from this step's CAM for the batch's tag images (decoder only)."""
        side = self.cfg.input_side
        for j, idx in enumerate(indices):
            item = self.items[idx]
            if item.kind != "tags":
                continue
            hc, wc = cam.shape[-2:]
            (h, w), scale, flip, cw = item.size, item.scale, flips[j], item.content[1]

            def to_image(
                cells: np.ndarray, hc=hc, wc=wc, h=h, w=w, scale=scale, flip=flip, cw=cw
            ) -> np.ndarray:
                xy = (cells + 0.5) * np.array([side / wc, side / hc])  # canvas pixels of this view
                if flip:  # the view's content is mirrored within its width
                    xy[:, 0] = cw - xy[:, 0]
                xy = xy / scale
                outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] >= h)
                xy[outside] = np.nan
                return xy

            found = tags_to_points(
                self.engine, self.embedded.handle(idx), cam[j], item.tags, to_image, self.tag_options
            )
            self._tag_latents.pop(idx, None)
            self.tag_instances[idx] = {
                "points": torch.as_tensor(found.points, dtype=torch.float64).reshape(-1, 2),
                "classes": torch.as_tensor(found.class_ids, dtype=torch.long),
                "masks": to_canvas(found.candidates, scale, side),
            }

    # -- one step --------------------------------------------------------------------------------
    def view(self, index: int, flip: bool) -> torch.Tensor:
        """Item `index`'s 3xSxS canvas in one orientation (flipped within its content)."""
        item = self.items[index]
        return flip_content(item.image, item.content[1]) if flip else item.image

    def step(self, iteration: int) -> dict[str, float]:
        c = self.cfg
        torch.manual_seed(c.seed * 1_000_003 + iteration)
        indices = batch_indices(len(self.items), c.batch_size, iteration, c.seed)[self.rank :: self.world]
        rng = np.random.default_rng([c.seed, iteration, 7])
        flips = [bool(rng.random() < 0.5) and c.hflip for _ in indices]
        images = to_device(torch.stack([self.view(i, f) for i, f in zip(indices, flips)]), self.device)
        self.model.train()
        with self.precision.autocast():
            outputs = self._forward_model(images)
        class_logits, mask_logits, prompts, cam = (t.float() for t in outputs)
        wish = c.mode == "wish"
        warm = wish and iteration < c.warmup_iterations
        zero = cam.sum() * 0
        terms = {"cls": zero, "bce": zero, "dice": zero, "prompt": zero, "cam": zero, "self": zero}
        if wish:
            tags = torch.zeros(len(indices), self.num_classes)
            for j, i in enumerate(indices):
                tags[j, self.items[i].tags] = 1
            terms["cam"] = cam_loss(cam, to_device(tags, self.device))
        if not warm:
            if wish and (iteration - c.warmup_iterations) % c.sam_every == 0:
                self._refresh_tags(indices, flips, cam.detach())
            targets = [
                self._tag_targets(i, f) if self.items[i].kind == "tags" else self.items[i].targets[int(f)]
                for i, f in zip(indices, flips)
            ]
            targets = [t.to(self.device) if t is not None else None for t in targets]
            layers = range(class_logits.shape[0]) if c.deep_supervision else [class_logits.shape[0] - 1]
            use_prompt = wish and c.use_prompt
            for layer in layers:
                points = torch.rand(c.match_points, 2, device=self.device)
                matches = [
                    match(
                        class_logits[layer, b],
                        mask_logits[layer, b],
                        prompts[layer, b] if use_prompt else None,
                        t,
                        points,
                        self.weights,
                        c.prompt_temperature,
                        self.level if wish else None,
                    )
                    if t is not None
                    else None
                    for b, t in enumerate(targets)
                ]
                seg = seg_loss(
                    class_logits[layer],
                    mask_logits[layer],
                    prompts[layer] if use_prompt else None,
                    targets,
                    matches,
                    c.loss_points,
                    self.weights,
                    c.prompt_temperature,
                )
                for key in ("cls", "bce", "dice", "prompt"):
                    terms[key] = terms[key] + seg[key]
            if wish and c.use_self:
                terms["self"] = self_loss(cam, class_logits[-1], mask_logits[-1])
        w = self.weights
        total = w.cls * terms["cls"] + w.mask * (terms["bce"] + terms["dice"]) + w.prompt * terms["prompt"]
        total = total + c.w_cam * terms["cam"] + c.w_self * terms["self"]
        self.precision.step(total, self.optimizer)
        return {"total": float(total.detach())} | {k: float(v.detach()) for k, v in terms.items()}

    # -- evaluation ------------------------------------------------------------------------------
    def has_validation(self) -> bool:
        return bool(self.val.samples)

    def _prepare_val(self) -> None:
        if self._val_gt is not None:
            return
        from training.coco import coco_dataset

        self._val_gt = coco_dataset(self.val.samples, self.val.class_names, self.val.category_ids)
        self._val_images = [s.load_image() for s in self.val.samples]

    def predict_val(self, model: nn.Module | None = None) -> list[dict[str, Any]]:
        """COCO results of the model on the validation images, through `InstanceSegmenter` (the square
        training canvas, as served and exported)."""
        from training.coco import coco_results

        self._prepare_val()
        model = model or self.model
        meta = {"num_classes": self.num_classes, "input_side": self.cfg.input_side}
        segmenter = InstanceSegmenter(torch_instance_forward(model, self.device), meta, batch_size=4)
        predictions = segmenter.segment(self._val_images, top_k=self.cfg.top_k, min_score=0.0)
        return coco_results([s.image_id for s in self.val.samples], predictions, self.val.category_ids)

    def evaluate(self) -> dict[str, Any]:
        if not self.has_validation():
            return {}
        self._prepare_val()
        ap = coco_mask_ap(self._val_gt, self.predict_val())
        return {"score": ap["AP"]} | ap

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.state_dict(),
            "tag_instances": {int(k): v for k, v in self.tag_instances.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("scaler"))
        self.tag_instances = {int(k): dict(v) for k, v in state.get("tag_instances", {}).items()}
        self._tag_latents = {}

    def after_training(self) -> None:
        if self.engine is not None:
            check_reencoding(self.engine, self.embedded, self._encoder_calls_after_prepare)

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        kinds = [i.kind for i in self.items]
        return {
            "student": c.student,
            "dataset": c.dataset,
            "labels": c.labels if c.mode == "wish" else "masks",
            "label_images": {k: kinds.count(k) for k in sorted(set(kinds))},
            "engine": self.engine.name if self.engine is not None else None,
            "prompt_encoder": self.latents.source if self.latents is not None else None,
            "encoder_calls": self.engine.stats.encoder_calls if self.engine is not None else None,
            "reencoded_images": self.embedded.reencoded if self.embedded is not None else None,
            "device": str(self.device),
            "precision": self.precision.name,
            "val": {k: v for k, v in final.items() if k != "score"},
            "val_ap": final.get("AP"),
            "images": len(self.items),
        }

    def save_outputs(self, out: Path, final: dict[str, Any]) -> None:
        """student.pt, and the validation ground truth and predictions as COCO files
        (`sesam eval-instances --pred val_predictions.json --gt val_gt.json` scores them)."""
        from training.coco import write_coco

        c = self.cfg
        if self.has_validation():
            write_coco(self._val_gt, out / "val_gt.json")
            write_coco(self.predict_val(), out / "val_predictions.json")
        save_instance_student(
            out / "student.pt",
            self.model,
            c.student,
            self.num_classes,
            extra={
                "class_names": list(self.train.class_names),
                "category_ids": list(self.train.category_ids),
                "input_side": c.input_side,
                "mode": c.mode,
                "labels": c.labels,
                "iterations": c.iterations,
                "val_ap": final.get("AP"),
            },
        )
