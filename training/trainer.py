"""Training students from weak labels: supervised | weak | fixmatch | naive-sam | sesam.

- supervised: cross-entropy on dense ground truth (the upper bound).
- weak: partial cross-entropy on the weakly labelled pixels only.
- fixmatch: weak loss + pseudo-labels of an EMA teacher (confidence >= theta1) on the weak view,
  learned by the student on the strong view.
- naive-sam: weak loss + labels pre-generated once by the naive SAM labeler.
- sesam (paper 000): EMA teacher (0.999); every `sam_every` (M) iterations the weak labels of the
  batch's images, extended with teacher pixels of confidence >= theta2, are refined by the SeSAM
  labeler; loss = L_weak + w_sam L_SAM + w_pseudo L_pseudo with precedence weak > SAM > pseudo.

SAM in the loop never re-encodes: every training image is embedded once, up front (the engine's
cache), prompts are made in ORIGINAL image coordinates (the teacher's view probabilities are
warped back), only the decoder runs, and the refined labels are warped into the augmented view.
Between refreshes an image keeps its latest SAM labels.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from rich.progress import Progress
from torch import nn

from models.engine import EngineConfig, ImageHandle, build_engine
from models.progress import progress_bar
from models.refine import NaiveLabeler, SeSAMLabeler, SeSAMOptions
from models.students import build_student, normalize, pad_to_multiple, save_student
from models.weak import atomic_write, read_label_png, save_png
from training.augment import center_view
from training.data import WeakDataset, batch_indices, make_batch
from training.losses import (
    UNLABELED,
    ema_decay,
    ema_update,
    partial_ce,
    pseudo_labels,
    sesam_loss,
    sesam_targets,
)
from training.metrics import ConfusionMatrix

MODES = ("supervised", "weak", "fixmatch", "naive-sam", "sesam")


@dataclass
class TrainConfig:
    mode: str = "sesam"
    student: str = "fpn-mobilenetv2"
    num_classes: int = 11
    # data: CamVid with weak labels derived by protocol, or generic folders
    camvid_root: str | None = None
    kind: str = "scribbles"
    weak_seed: int = 0
    train_limit: int | None = None
    val_limit: int | None = None
    train_images: str | None = None
    train_weak: str | None = None
    val_images: str | None = None
    val_gt: str | None = None
    ignore_index: int | None = 11
    # optimisation
    iterations: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    crop: tuple[int, int] = (160, 224)
    base_scale: float = 0.5
    seed: int = 0
    # semi-supervision (paper defaults)
    ema: float = 0.999
    # Mean-Teacher warm-up: decay min(ema, 1 - 1/(t+1)) so that early teachers are not mostly the
    # random initial weights (at 0.999 a fixed decay keeps 67% of them after 400 iterations)
    ema_warmup: bool = True
    theta1: float = 0.96
    theta2: float = 0.98
    sam_every: int = 4
    w_sam: float = 1.0
    # L_SAM as the mean over classes of each class's mean pixel loss (false: the paper's plain pixel
    # mean). SAM regions of road and sky are far larger than those of poles or signs: on CamVid they
    # hold 90% (points) / 65% (scribbles) of SAM-labelled pixels vs 21% / 32% of weak ones, see the
    # README; balanced scored higher over 3 seeds for both kinds.
    sam_class_balanced: bool = True
    w_pseudo: float = 0.01
    fixmatch_w_pseudo: float = 1.0
    # which view the student learns from in fixmatch / sesam: "both" (FixMatch proper: weak and SAM
    # losses on the weak view, pseudo-labels on the strong view; two student passes), "strong" (every
    # loss on the strong view, one pass) or "weak". On CamVid at 400 iterations "both" beat "strong"
    # by 2.5 (fixmatch) and 3.2 (sesam) mIoU points, see the README.
    student_view: str = "both"
    sesam: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(
        default_factory=lambda: {"backend": "classical", "cache_bytes": 4 * 1024**3}
    )
    # bookkeeping
    out_dir: str = "runs/train"
    eval_every: int = 200
    checkpoint_every: int = 100
    log_every: int = 10
    resume: bool = True
    quiet: bool = False

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} unknown; choose one of {MODES}")
        if self.camvid_root is None and (self.train_images is None or self.train_weak is None):
            raise ValueError("give camvid_root, or train_images and train_weak")
        if any(c % 32 for c in self.crop):
            raise ValueError(f"crop {list(self.crop)} must be multiples of 32 (the students' stride)")
        if self.iterations < 1 or self.batch_size < 1 or self.sam_every < 1:
            raise ValueError("iterations, batch_size and sam_every must be >= 1")
        if self.student_view not in ("strong", "weak", "both"):
            raise ValueError(f"student_view {self.student_view!r} unknown; choose strong, weak or both")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")
        SeSAMOptions(**self.sesam).validate()

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training settings {unknown}")
        cfg = cls(**values)
        cfg.crop = tuple(int(c) for c in cfg.crop)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the config ({exc})") from exc
        for item in overrides or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            data[key.strip()] = yaml.safe_load(raw)
        return cls.from_mapping(data, source=str(path))


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def weights_digest(model: nn.Module, parameters_only: bool = False) -> str:
    """sha256 of the state dict (or of the parameters alone: DDP keeps those identical across ranks,
    while BatchNorm running statistics stay per rank)."""
    digest = hashlib.sha256()
    items = model.named_parameters() if parameters_only else model.state_dict().items()
    for key, value in sorted(items):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


# settings a resumed run may change: the budget, bookkeeping, where data and outputs live
RESUME_FREE = frozenset(
    {"iterations", "eval_every", "checkpoint_every", "log_every", "quiet", "resume", "out_dir"}
    | {"camvid_root", "train_images", "train_weak", "val_images", "val_gt", "val_limit"}
)


_WITH_SAM, _WITH_TEACHER = frozenset({"sesam", "naive-sam"}), frozenset({"fixmatch", "sesam"})
# settings only some modes read (the others ignore them): setting -> those modes
READ_BY = {
    **dict.fromkeys(("engine", "sesam", "w_sam", "sam_class_balanced"), _WITH_SAM),
    **dict.fromkeys(("sam_every", "theta2", "w_pseudo"), frozenset({"sesam"})),
    **dict.fromkeys(("ema", "ema_warmup", "theta1", "student_view"), _WITH_TEACHER),
    "fixmatch_w_pseudo": frozenset({"fixmatch"}),
}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for every setting that differs and a resume may not change. Keys a
    checkpoint predates, and settings the (current) mode never reads, are not compared;
    `engine.cache_bytes` is free (a memory budget)."""
    mode = current.get("mode")
    changes = []
    for key in sorted(set(saved) & set(current) - RESUME_FREE):
        if mode is not None and mode not in READ_BY.get(key, MODES):
            continue
        old, new = saved[key], current[key]
        if key == "engine":
            old = {k: v for k, v in old.items() if k != "cache_bytes"}
            new = {k: v for k, v in new.items() if k != "cache_bytes"}
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            changes.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    return changes


class Trainer:
    """Runs one training configuration; `train()` is resumable from `out_dir/last.pt`."""

    def __init__(
        self, cfg: TrainConfig, train_ds: WeakDataset | None = None, val_ds: WeakDataset | None = None
    ):
        cfg.validate()
        self.cfg = cfg
        self.rank, self.world = _rank_world()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.train_ds = train_ds or self._load_train()
        self.val_ds = val_ds if val_ds is not None else self._load_val()
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.student = build_student(cfg.student, cfg.num_classes)
        self.teacher = copy.deepcopy(self.student).eval() if cfg.mode in ("fixmatch", "sesam") else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.model: nn.Module = self.student
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(self.student)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.iteration = 0
        self.sam_labels: dict[int, np.ndarray] = {}
        self.naive_labels: list[np.ndarray] | None = None
        self.engine = None
        self.handles: list[ImageHandle] = []
        self.labeler: SeSAMLabeler | None = None
        self.history: list[dict[str, Any]] = []
        self.best_miou = float("nan")
        self._tensorboard = None
        if self.rank == 0:
            try:  # optional: scalars for TensorBoard when it is installed
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                pass

    # -- setup ---------------------------------------------------------------------------------
    def _load_train(self) -> WeakDataset:
        c = self.cfg
        if c.camvid_root:
            return WeakDataset.from_camvid(
                c.camvid_root, "train", c.kind, c.weak_seed, c.train_limit, quiet=c.quiet
            )
        return WeakDataset.from_folders(c.train_images, c.train_weak, None, c.ignore_index, c.train_limit)

    def _load_val(self) -> WeakDataset | None:
        c = self.cfg
        if c.camvid_root:
            return WeakDataset.from_camvid(c.camvid_root, "val", None, limit=c.val_limit, quiet=c.quiet)
        if c.val_images and c.val_gt:
            return WeakDataset.from_folders(c.val_images, c.val_images, c.val_gt, c.ignore_index, c.val_limit)
        return None

    def _progress(self, description: str) -> Progress:
        return progress_bar(description, disable=self.cfg.quiet or self.rank != 0)

    def prepare_sam(self) -> None:
        """Embed every training image once (sesam) or pre-generate naive labels (naive-sam)."""
        c = self.cfg
        if c.mode not in ("sesam", "naive-sam"):
            return
        self.engine = build_engine(EngineConfig.from_mapping(c.engine, source="engine settings"))
        ds = self.train_ds
        self.handles = []  # one per training image; refreshes use these, never re-hash or re-encode
        with self._progress("embed train images") as progress:
            task = progress.add_task("embed", total=len(ds), info=self.engine.name)
            for i in range(0, len(ds), 4):
                self.handles.extend(self.engine.embed(ds.images[i : i + 4]))
                progress.advance(task, len(ds.images[i : i + 4]))
        if c.mode == "sesam":
            self.labeler = SeSAMLabeler(self.engine, SeSAMOptions(**c.sesam))
            return
        cache = self.out / "naive_labels"
        labeler = NaiveLabeler(self.engine)
        labels = []
        with self._progress("naive SAM labels") as progress:
            task = progress.add_task("naive", total=len(ds), info=self.engine.name)
            for i, stem in enumerate(ds.stems):
                path = cache / f"{stem}.png"
                if path.exists():
                    labels.append(read_label_png(path))
                else:
                    labels.append(labeler.refine(self.handles[i], ds.weak[i]).labels)
                    if self.rank == 0:
                        save_png(labels[-1], path)
                progress.advance(task)
        self.naive_labels = labels

    # -- one step --------------------------------------------------------------------------------
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(normalize(images))
        return self.model(x)[..., :h, :w]

    @torch.no_grad()
    def _teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(normalize(images))
        return self.teacher(x)[..., :h, :w].softmax(1)

    def _refresh_sam(self, batch, probs: torch.Tensor) -> None:
        """SeSAM labels for the batch's images in original coordinates, from the cached embeddings."""
        confident = pseudo_labels(probs, self.cfg.theta2).to(torch.uint8).numpy()  # view space
        for j, idx in enumerate(batch.indices):
            extension = batch.views[j].labels_to_original(confident[j])  # 255 outside the view
            result = self.labeler.refine(self.handles[idx], self.train_ds.weak[idx], extension=extension)
            self.sam_labels[idx] = result.labels

    def _sam_targets(self, batch) -> torch.Tensor:
        maps = []
        for j, idx in enumerate(batch.indices):
            source = self.sam_labels.get(idx) if self.naive_labels is None else self.naive_labels[idx]
            h, w = batch.views[j].size
            maps.append(
                batch.views[j].labels_to_view(source)
                if source is not None
                else np.full((h, w), UNLABELED, np.uint8)
            )
        return torch.from_numpy(np.stack(maps)).long()

    def _semi_supervised_loss(
        self, batch, sam, pseudo, w_sam: float, w_pseudo: float
    ) -> dict[str, torch.Tensor]:
        """The precedence loss on the view(s) `student_view` names; "both" runs the student twice."""
        view, balanced = self.cfg.student_view, self.cfg.sam_class_balanced
        if view != "both":
            images = batch.strong_images if view == "strong" else batch.weak_images
            return sesam_loss(
                self._forward(images), batch.weak_labels, sam, pseudo, w_sam, w_pseudo, balanced
            )
        labelled = sesam_loss(
            self._forward(batch.weak_images), batch.weak_labels, sam, None, w_sam, 0.0, balanced
        )
        # pseudo-labels only where neither a weak nor a SAM label exists (the same precedence)
        _, _, pseudo_only = sesam_targets(batch.weak_labels, sam, pseudo)
        pseudo_term = partial_ce(self._forward(batch.strong_images), pseudo_only)
        labelled["pseudo"] = pseudo_term
        labelled["total"] = labelled["total"] + w_pseudo * pseudo_term
        return labelled

    def step(self, iteration: int) -> dict[str, float]:
        c = self.cfg
        torch.manual_seed(c.seed * 1_000_003 + iteration)
        indices = batch_indices(len(self.train_ds), c.batch_size, iteration, c.seed)[self.rank :: self.world]
        batch = make_batch(self.train_ds, indices, iteration, c.seed, c.crop, c.base_scale)
        self.student.train()
        if c.mode == "supervised":
            terms = {"total": partial_ce(self._forward(batch.weak_images), batch.gt_labels)}
        elif c.mode == "weak":
            terms = {"total": partial_ce(self._forward(batch.weak_images), batch.weak_labels)}
        elif c.mode == "naive-sam":
            terms = sesam_loss(
                self._forward(batch.weak_images),
                batch.weak_labels,
                self._sam_targets(batch),
                None,
                c.w_sam,
                0.0,
                c.sam_class_balanced,
            )
        else:
            probs = self._teacher_probs(batch.weak_images)
            pseudo = pseudo_labels(probs, c.theta1)
            if c.mode == "fixmatch":
                sam, w_sam, w_pseudo = None, 0.0, c.fixmatch_w_pseudo
            else:
                if iteration % c.sam_every == 0:
                    self._refresh_sam(batch, probs)
                sam, w_sam, w_pseudo = self._sam_targets(batch), c.w_sam, c.w_pseudo
            terms = self._semi_supervised_loss(batch, sam, pseudo, w_sam, w_pseudo)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_decay(c.ema, iteration, c.ema_warmup))
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None, batch_size: int = 4) -> dict[str, Any]:
        """mIoU on the validation set: predictions at base_scale, upsampled to full size."""
        if self.val_ds is None:
            return {}
        model = model or self.student
        model.eval()
        conf = ConfusionMatrix(self.cfg.num_classes, UNLABELED)
        ds = self.val_ds
        for start in range(0, len(ds), batch_size):
            idx = list(range(start, min(start + batch_size, len(ds))))
            sizes = {ds.images[i].shape[:2] for i in idx}
            for size in sizes:
                group = [i for i in idx if ds.images[i].shape[:2] == size]
                view = center_view(size, self.cfg.base_scale)
                images = torch.from_numpy(np.stack([view.image_to_view(ds.images[i]) for i in group]))
                x, (h, w) = pad_to_multiple(normalize(images.permute(0, 3, 1, 2)))
                logits = model(x)[..., :h, :w]
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                preds = logits.argmax(1).numpy().astype(np.uint8)
                for p, i in zip(preds, group, strict=True):
                    conf.update(p, ds.gt_map(i))
        return {
            "miou": conf.miou(),
            "pixel_accuracy": conf.pixel_accuracy(),
            "per_class_iou": conf.iou_per_class(),
        }

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        payload = {
            "iteration": self.iteration,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "sam_labels": {int(k): torch.from_numpy(v) for k, v in self.sam_labels.items()},
            "config": asdict(self.cfg),
            "best_miou": float(self.best_miou),  # a plain float: weights_only loads refuse numpy scalars
        }
        atomic_write(self._checkpoint_path(), lambda tmp: torch.save(payload, tmp))

    def load_checkpoint(self) -> bool:
        path = self._checkpoint_path()
        if not (self.cfg.resume and path.exists()):
            return False
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            self.student.load_state_dict(payload["student"])
            if self.teacher is not None and payload["teacher"] is not None:
                self.teacher.load_state_dict(payload["teacher"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except Exception as exc:
            raise ValueError(f"{path}: cannot resume from this checkpoint ({exc})") from exc
        changed = config_changes(payload.get("config") or {}, asdict(self.cfg))
        if changed:
            raise ValueError(
                f"{path}: this run was started with other settings ({'; '.join(changed)}); resuming would mix "
                "two runs. Give another out_dir, or resume: false to start over."
            )
        self.iteration = int(payload["iteration"])
        self.sam_labels = {int(k): v.numpy() for k, v in payload["sam_labels"].items()}
        self.best_miou = float(payload.get("best_miou", float("nan")))
        return True

    def _log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.history.append(row)
        path = self.out / "metrics.csv"
        columns = ["iteration", "seconds_per_iter", "total", "weak", "sam", "pseudo", "val_miou", "lr"]
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, float):
                    self._tensorboard.add_scalar(key, value, row["iteration"])

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        c = self.cfg
        resumed = self.load_checkpoint()
        self.prepare_sam()
        start = self.iteration + 1 if resumed else 0
        encoder_calls = self.engine.stats.encoder_calls if self.engine is not None else 0
        timer, seconds = time.perf_counter(), []
        with self._progress(f"train {c.mode}") as progress:
            task = progress.add_task("train", total=c.iterations, completed=start, info="")
            for it in range(start, c.iterations):
                t0 = time.perf_counter()
                terms = self.step(it)
                seconds.append(time.perf_counter() - t0)
                self.iteration = it
                row: dict[str, Any] = {"iteration": it, "seconds_per_iter": seconds[-1], "lr": c.lr} | terms
                last = it == c.iterations - 1
                if self.val_ds is not None and ((it + 1) % c.eval_every == 0 or last):
                    if self.rank == 0:
                        metrics = self.evaluate()
                        row["val_miou"] = metrics["miou"]
                        self.best_miou = float(np.nanmax([self.best_miou, metrics["miou"]]))
                    if self.world > 1:
                        dist.barrier()
                if it % c.log_every == 0 or "val_miou" in row or last:
                    self._log(row)
                progress.update(
                    task,
                    advance=1,
                    info=f"loss {terms['total']:.3f}"
                    + (f" val mIoU {row['val_miou']:.3f}" if "val_miou" in row else ""),
                )
                if (it + 1) % c.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        if self.engine is not None:
            reencoded = self.engine.stats.encoder_calls - encoder_calls
            assert reencoded == 0, f"SAM in the loop re-encoded {reencoded} times"
        summary = self._finish(time.perf_counter() - timer, seconds)
        if self.world > 1:
            dist.barrier()
        return summary

    def _finish(self, elapsed: float, seconds: list[float]) -> dict[str, Any]:
        c = self.cfg
        final = self.evaluate() if self.val_ds is not None and self.rank == 0 else {}
        summary = {
            "mode": c.mode,
            "student": c.student,
            "kind": c.kind,
            "iterations": c.iterations,
            "seed": c.seed,
            "sam_class_balanced": c.sam_class_balanced,
            "seconds": round(elapsed, 1),
            "seconds_per_iter": float(np.mean(seconds)) if seconds else None,
            "val_miou": final.get("miou"),
            "val_per_class_iou": (
                [None if np.isnan(v) else float(v) for v in final["per_class_iou"]] if final else None
            ),
            "weights_sha256": weights_digest(self.student),
            "parameters_sha256": weights_digest(self.student, parameters_only=True),
            "encoder_calls": self.engine.stats.encoder_calls if self.engine is not None else None,
            "images": len(self.train_ds),
        }
        if self.world > 1:
            atomic_write(
                self.out / f"rank{self.rank}.json", lambda tmp: Path(tmp).write_text(json.dumps(summary))
            )
        if self.rank == 0:
            save_student(
                self.out / "student.pt",
                self.student,
                c.student,
                c.num_classes,
                extra={
                    "val_miou": final.get("miou"),
                    "mode": c.mode,
                    "kind": c.kind,
                    "iterations": c.iterations,
                    "base_scale": c.base_scale,
                },
            )
            atomic_write(
                self.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1))
            )
        return summary
