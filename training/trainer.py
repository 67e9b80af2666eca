"""Training configuration and the trainers of `sesam train`: the generic loop (`training.loop`)
running the semantic recipe (supervised | weak | fixmatch | naive-sam | sesam | cam) or the instance
one (wish | supervised-instance). WeakSAM's WSOD head and detector run on the same loop
(`training.weaksam`, `training.recipes.wsod`, `training.recipes.detector`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from models.config import from_mapping, load, parse_overrides, read_yaml, setting
from models.labels import NaiveOptions, SeSAMOptions
from models.runtime.device import (
    AMP_CHOICES,
    AMP_HELP,
    DEVICE_HELP,
    check_device_name,
    ddp_backend,
    resolve_device,
)
from models.runtime.progress import progress_bar
from models.students.semantic import student_registry
from training.data import WeakDataset
from training.loop import (
    LR_SCHEDULES,
    TrainLoop,
    config_changes,
    launched_by_torchrun,
    rank_world,
    weights_digest,
)
from training.recipes.instance import INSTANCE_MODES, InstanceRecipe, InstanceTrainConfig
from training.recipes.semantic import MODES, READ_BY, SemanticRecipe

ENV_PREFIX = "SESAM_TRAIN_"

__all__ = [
    "INSTANCE_MODES",
    "MODES",
    "READ_BY",
    "InstanceTrainConfig",
    "InstanceTrainer",
    "TrainConfig",
    "Trainer",
    "build_trainer",
    "config_changes",
    "config_from_yaml",
    "weights_digest",
]


@dataclass
class TrainConfig:
    """Everything one training run reads (YAML, SESAM_TRAIN_* environment, --set key=value)."""

    # settings that moved: models.config names where they went instead of "unknown setting"
    MOVED_SETTINGS: ClassVar[dict[str, str]] = {
        "theta2": "is a SeSAM option now; write it as sesam: {theta2: ...}",
    }

    mode: str = setting("sesam", help=f"one of {', '.join(MODES)}")
    student: str = setting("fpn-mobilenetv2", help=f"one of {', '.join(sorted(student_registry))}")
    num_classes: int = setting(11, help="classes the student predicts")
    # data: CamVid with weak labels derived by protocol, or generic folders
    camvid_root: str | None = setting(None, help="CamVid folder; weak labels derived by protocol `kind`")
    kind: str = setting("scribbles", help="CamVid: the weak-label protocol (points, scribbles, coarse, ...)")
    weak_seed: int = setting(0, help="CamVid: the protocol's seed")
    train_limit: int | None = setting(None, help="only the first N training images")
    val_limit: int | None = setting(None, help="only the first N validation images")
    train_images: str | None = setting(None, help="folders: training images <stem>.*")
    train_weak: str | None = setting(None, help="folders: weak labels <stem>.json / <stem>.png")
    val_images: str | None = setting(None, help="folders: validation images (no weak labels needed)")
    val_gt: str | None = setting(None, help="folders: validation dense labels <stem>.png")
    ignore_index: int | None = setting(11, help="folders: the ground truth's void class id")
    # optimisation
    iterations: int = setting(1000, help="optimisation steps (may grow on resume)")
    batch_size: int = setting(4, help="images per step (split across DDP ranks)")
    lr: float = setting(1e-4, help="AdamW learning rate")
    weight_decay: float = setting(0.01, help="AdamW weight decay")
    lr_schedule: str = setting(
        "constant", help="`constant`, or `poly` (lr (1 - t/T)^0.9 after a linear warm-up; DeepLab's schedule)"
    )
    lr_warmup: int = setting(0, help="poly: linear learning-rate warm-up steps from lr/100 to lr")
    crop: tuple[int, int] = setting((160, 224), help="training crop h,w (multiples of 32)")
    base_scale: float = setting(0.5, help="image scale before the random scale jitter (and at evaluation)")
    seed: int = setting(0, help="initial weights, batches and augmentations")
    device: str = setting(
        "auto", help=f"where the student, teacher, losses and SAM run: {DEVICE_HELP} (docs/training.md)"
    )
    amp: str = setting("auto", help=AMP_HELP)
    # semi-supervision (paper defaults)
    ema: float = setting(0.999, help="teacher EMA decay")
    ema_warmup: bool = setting(
        True,
        help="decay min(ema, 1 - 1/(t+1)), so early teachers are not mostly the random initial weights",
    )
    theta1: float = setting(0.96, help="fixmatch / sesam: teacher confidence for pseudo-labels")
    sam_every: int = setting(4, help="sesam: refresh SAM labels every M iterations")
    w_sam: float = setting(1.0, help="sesam / naive-sam: weight of L_SAM")
    sam_class_balanced: bool = setting(
        True,
        help="L_SAM as the mean of per-class means (false: the paper's pixel mean); SAM regions of road "
        "and sky dwarf those of poles and signs (docs/results.md)",
    )
    w_pseudo: float = setting(0.01, help="sesam: weight of L_pseudo")
    fixmatch_w_pseudo: float = setting(1.0, help="fixmatch: weight of L_pseudo")
    student_view: str = setting(
        "both",
        help="fixmatch / sesam: `both` (weak + SAM losses on the weak view, pseudo-labels on the strong "
        "view), `strong` or `weak`",
    )
    sesam: dict[str, Any] = setting({}, help="sesam: SeSAM labeler options (see the SeSAM table; theta2 too)")
    naive: dict[str, Any] = setting({}, help="naive-sam: naive labeler options (scribble_points, overlap)")
    engine: dict[str, Any] = setting(
        {"backend": "classical", "cache_bytes": 4 * 1024**3}, help="the engine (see the engine table)"
    )
    # cam: a CAM classifier from image tags (the student's backbone + a 1x1 conv CAM head)
    cam_output_stride: int = setting(16, help="cam: backbone output stride, 8, 16 or 32 (dilated below 32)")
    cam_threshold: float = setting(
        0.3, help="cam: background threshold on normalised CAMs for the validation pseudo-labels"
    )
    # bookkeeping
    out_dir: str = setting("runs/train", help="checkpoints, metrics.csv, summary.json, student.pt")
    eval_every: int = setting(200, help="validate every N iterations (and at the end)")
    checkpoint_every: int = setting(100, help="write last.pt every N iterations (and at the end)")
    log_every: int = setting(10, help="a metrics.csv row every N iterations")
    resume: bool = setting(True, help="continue from out_dir/last.pt when it exists")
    quiet: bool = setting(False, help="no progress bars")

    def validate(self, source: str = "training config") -> None:
        if self.mode not in MODES:
            raise ValueError(f"{source}: mode {self.mode!r} unknown; choose one of {MODES}")
        if self.student not in student_registry:
            raise ValueError(
                f"{source}: student {self.student!r} unknown; choose one of {sorted(student_registry)}"
            )
        if self.camvid_root is None and (self.train_images is None or self.train_weak is None):
            raise ValueError(f"{source}: give camvid_root, or train_images and train_weak")
        if any(c % 32 for c in self.crop):
            raise ValueError(
                f"{source}: crop {list(self.crop)} must be multiples of 32 (the students' stride)"
            )
        if self.mode == "cam" and self.camvid_root and self.kind != "tags":
            raise ValueError(f"{source}: mode cam trains from image tags; set kind: tags (got {self.kind!r})")
        if self.cam_output_stride not in (8, 16, 32) or not 0 < self.cam_threshold < 1:
            raise ValueError(f"{source}: cam_output_stride must be 8, 16 or 32 and cam_threshold in (0, 1)")
        if self.iterations < 1 or self.batch_size < 1 or self.sam_every < 1:
            raise ValueError(f"{source}: iterations, batch_size and sam_every must be >= 1")
        if not self.lr > 0 or not self.weight_decay >= 0 or self.num_classes < 1:  # NaN fails too
            raise ValueError(
                f"{source}: lr must be > 0, weight_decay >= 0 and num_classes >= 1; got {self.lr}, "
                f"{self.weight_decay}, {self.num_classes}"
            )
        if self.lr_schedule not in LR_SCHEDULES or self.lr_warmup < 0:
            raise ValueError(
                f"{source}: lr_schedule {self.lr_schedule!r} must be one of {LR_SCHEDULES}, lr_warmup >= 0"
            )
        if self.student_view not in ("strong", "weak", "both"):
            raise ValueError(
                f"{source}: student_view {self.student_view!r} unknown; choose strong, weak or both"
            )
        if not 0 <= self.ema < 1:
            raise ValueError(f"{source}: ema must lie in [0, 1), got {self.ema}")
        check_device_name(self.device, f"{source}: device")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"{source}: amp {self.amp!r} unknown; choose one of {AMP_CHOICES}")
        from_mapping(SeSAMOptions, self.sesam, f"{source}: sesam")
        from_mapping(NaiveOptions, self.naive, f"{source}: naive")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        return from_mapping(cls, values, source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """A YAML file, then SESAM_TRAIN_* environment variables, then `--set key=value` items."""
        values = read_yaml(path)
        return load(cls, yaml_values=values, prefix=ENV_PREFIX, overrides=overrides or (), source=str(path))


def _start(cfg: TrainConfig | InstanceTrainConfig) -> tuple[int, int, Any]:
    """What every trainer does first: validate, join the process group under torchrun (nccl between
    GPUs, gloo on the CPU), make the output folder; returns (rank, world, the progress-bar factory)."""
    cfg.validate()
    rank, world = rank_world()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():  # even alone: the same code path
        dist.init_process_group(ddp_backend(device))
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    return rank, world, functools.partial(progress_bar, disable=cfg.quiet or rank != 0)


class Trainer(TrainLoop):
    """The loop over the semantic recipe; `train()` is resumable from `out_dir/last.pt`."""

    def __init__(
        self, cfg: TrainConfig, train_ds: WeakDataset | None = None, val_ds: WeakDataset | None = None
    ):
        rank, world, progress = _start(cfg)
        super().__init__(cfg, SemanticRecipe(cfg, rank, world, progress, train_ds, val_ds), rank, world)

    # the recipe's pieces, for callers that drive steps themselves (benchmarks, tests)
    @property
    def engine(self):
        return self.recipe.engine

    @property
    def sam_labels(self):
        return self.recipe.sam_labels

    @property
    def best_miou(self) -> float:
        return self.best_score

    def prepare_sam(self) -> None:
        self.recipe.prepare()

    def step(self, iteration: int) -> dict[str, float]:
        return self.recipe.step(iteration)

    def evaluate(self, **kwargs) -> dict[str, Any]:
        return self.recipe.evaluate(**kwargs)


class InstanceTrainer(TrainLoop):
    """The loop over the instance recipe (wish | supervised-instance); resumable from out_dir/last.pt."""

    def __init__(self, cfg: InstanceTrainConfig):
        rank, world, progress = _start(cfg)
        super().__init__(cfg, InstanceRecipe(cfg, rank, world, progress), rank, world)


def config_from_yaml(
    path: str | Path, overrides: list[str] | None = None
) -> TrainConfig | InstanceTrainConfig:
    """The semantic or the instance config, by the file's (or an override's) `mode`."""
    mode = parse_overrides(overrides or ()).get("mode", read_yaml(path).get("mode"))
    return (InstanceTrainConfig if mode in INSTANCE_MODES else TrainConfig).from_yaml(path, overrides)


def build_trainer(cfg: TrainConfig | InstanceTrainConfig) -> TrainLoop:
    return InstanceTrainer(cfg) if isinstance(cfg, InstanceTrainConfig) else Trainer(cfg)
