"""The generic training loop every task shares; a task only brings a recipe (`training.recipes`).

The loop owns what does not depend on the task: the iteration count (a resumed run restarts at the
iteration after its checkpoint; recipes derive batches and random draws from (seed, iteration), so
it sees exactly the batches an uninterrupted run would, and a single-process run gets the global
generators' states back as well), the learning-rate schedule, resume from `out_dir/last.pt` (a
`models.io` checkpoint of kind "train_state") with the settings check, DDP bookkeeping (rank 0
evaluates, logs and writes; every rank writes `rank<r>.json` under torchrun), the evaluation
schedule, atomic checkpoints, metrics (CSV; TensorBoard scalars when it is installed), progress and
the summary. Devices and precision belong to the recipes (`models.runtime.device`). Modelled on
detectron2's `train_loop`: the loop calls the recipe's hooks and never looks inside a batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import Progress
from torch import nn

from models.io import atomic_write, atomic_write_text, load_checkpoint, save_checkpoint
from models.runtime.progress import progress_bar

# settings a resumed run may change: the budget, bookkeeping, where data and outputs live
RESUME_FREE = frozenset(
    {
        "iterations",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "quiet",
        "resume",
        "out_dir",
        "device",
        "amp",
    }
    | {"camvid_root", "train_images", "train_weak", "val_images", "val_gt", "val_limit"}
)


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (it sets WORLD_SIZE, also for one process)."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def ddp_wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """`model` wrapped for DistributedDataParallel when a process group is up, else `model` itself.

    Buffers are not broadcast from rank 0 at each forward (as detectron2 does): the recipes run the
    student more than once before one backward (FixMatch's two views), and a broadcast between the two
    overwrites, in place, BatchNorm statistics that cuDNN's backward saved (seen on CUDA: "modified by
    an inplace operation"). Each rank keeps its own running statistics; rank 0's are saved.
    """
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        find_unused_parameters=find_unused_parameters,
    )


def weights_digest(model: nn.Module, parameters_only: bool = False) -> str:
    """sha256 of the state dict (or of the parameters alone: DDP keeps those identical across ranks,
    while BatchNorm running statistics stay per rank)."""
    digest = hashlib.sha256()
    items = model.named_parameters() if parameters_only else model.state_dict().items()
    for key, value in sorted(items):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def config_changes(
    saved: dict[str, Any], current: dict[str, Any], read_by: dict[str, frozenset[str]] | None = None
) -> list[str]:
    """'key: saved -> current' for every setting that differs and a resume may not change.

    Keys a checkpoint predates are not compared, nor settings the current mode never reads
    (`read_by`: setting -> the modes that read it; a setting not named there is read by every
    mode); `engine.cache_bytes` is free (a memory budget)."""
    mode = current.get("mode")
    changes = []
    for key in sorted(set(saved) & set(current) - RESUME_FREE):
        if read_by and mode is not None and key in read_by and mode not in read_by[key]:
            continue
        old, new = saved[key], current[key]
        if key == "engine":
            old = {k: v for k, v in old.items() if k != "cache_bytes"}
            new = {k: v for k, v in new.items() if k != "cache_bytes"}
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            changes.append(f"{key}: {saved[key]!r} -> {current[key]!r}")
    return changes


LR_SCHEDULES = ("constant", "poly")


def scheduled_lr(
    base: float, iteration: int, total: int, schedule: str = "constant", warmup: int = 0
) -> float:
    """The learning rate of step `iteration` (0-based) of `total`.

    `poly` is DeepLab's schedule, base * (1 - t/T)^0.9, after `warmup` steps rising linearly from
    base/100 (from-scratch students with AdamW diverge less early and settle better late)."""
    if schedule == "constant":
        return base
    if schedule != "poly":
        raise ValueError(f"lr_schedule {schedule!r} unknown; choose one of {LR_SCHEDULES}")
    if iteration < warmup:
        return base * (0.01 + 0.99 * iteration / warmup)
    return base * max(0.0, 1.0 - iteration / max(total, 1)) ** 0.9


@dataclass
class LoopSettings:
    """The loop's own settings for a task whose configuration does not carry them (the WSOD head,
    the retrained detector): a constant learning rate, no validation, resume whenever last.pt
    exists. The task's settings travel separately (`TrainLoop`'s `settings`)."""

    mode: str  # the task's name in the progress bar and the summary
    out_dir: str
    iterations: int
    lr: float
    seed: int
    checkpoint_every: int
    quiet: bool = False
    resume: bool = True
    lr_schedule: str = "constant"
    lr_warmup: int = 0
    eval_every: int = 1
    log_every: int = 10


class ModelOptimizerRecipe:
    """Hook defaults for a recipe that trains one `model` with one `optimizer` and has no validation
    (the WSOD head, the retrained detector): its resume state is the two state dicts."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    task: str  # the task's name in the progress bar and the summary
    cfg: Any  # the task's settings: iterations, lr, seed, checkpoint_every
    settings: dict[str, Any]  # what last.pt keeps and a resume compares

    def loop(self, out: Path, quiet: bool = False) -> TrainLoop:
        """The shared loop over this recipe, writing into `out`."""
        c = self.cfg
        settings = LoopSettings(self.task, str(out), c.iterations, c.lr, c.seed, c.checkpoint_every, quiet)
        return TrainLoop(settings, self, settings=self.settings, restart="Give another --out to start over.")

    def prepare(self) -> None:
        pass

    def has_validation(self) -> bool:
        return False

    def evaluate(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def after_training(self) -> None:
        pass


def rng_state() -> dict[str, Any]:
    """The global generators' states (torch on the CPU and, once CUDA is in use, on every GPU; numpy;
    Python's `random`) as tensors, lists, ints and floats, so a weights_only load reads them."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved; the GPUs' states only when CUDA is in use with as many GPUs."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_initialized() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def keep_measured(path: Path, summary: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`summary` with the `keys` it has taken from the summary already at `path` where that one
    measured them (not null): a rerun with no step left keeps what the run before it measured."""
    if not keys or not path.exists():
        return summary
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return summary
    return summary | {k: old[k] for k in keys if k in summary and old.get(k) is not None}


class Recipe(Protocol):
    """What a task implements; the loop calls these in order (see `TrainLoop.train`).

    A recipe may also name `rerun_keeps`: summary keys a rerun with no step left takes from the
    summary.json it finds (`keep_measured`) instead of writing what it did not measure (none when
    absent)."""

    read_by: dict[str, frozenset[str]]  # setting -> modes that read it (the resume check)
    model: nn.Module  # the network whose weights the summary digests
    optimizer: torch.optim.Optimizer  # the loop sets its learning rate every step (`scheduled_lr`)
    loss_terms: tuple[str, ...]  # the loss terms `step` returns, as metrics.csv columns
    score_name: str  # the validation score's column, e.g. "val_miou"; "" for a task without one

    def prepare(self) -> None:
        """Work before the first iteration that is not checkpointed (e.g. embedding every image)."""

    def step(self, iteration: int) -> dict[str, float]:
        """One optimisation step; returns the loss terms ('total' at least)."""

    def has_validation(self) -> bool: ...

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics; 'score' is the number the loop tracks as best."""

    def state_dict(self) -> dict[str, Any]:
        """What last.pt keeps as its weights: state dicts, tensors and plain containers (a
        weights_only load reads them back)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def after_training(self) -> None:
        """Checks that must hold once the loop ends (e.g. SAM was never re-encoded)."""

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        """The task's part of summary.json."""

    def save_outputs(self, out: Path, final: dict[str, Any]) -> None:
        """The trained artefacts (rank 0 only)."""


class TrainLoop:
    """Runs one configuration of one recipe; `train()` is resumable from `out_dir/last.pt`.

    `cfg` holds the loop's settings (out_dir, iterations, lr, lr_schedule, lr_warmup, seed, eval_every,
    checkpoint_every, log_every, resume, quiet, mode: the training configs, or `LoopSettings`);
    `settings` is the run's settings dict that last.pt keeps and a resume compares (`asdict(cfg)`
    when not given); `restart` is the advice a refused resume ends with."""

    def __init__(
        self,
        cfg: Any,
        recipe: Recipe,
        rank: int = 0,
        world: int = 1,
        settings: dict[str, Any] | None = None,
        restart: str = "Give another out_dir, or resume: false to start over.",
    ) -> None:
        self.cfg = cfg
        self.recipe = recipe
        self.rank, self.world = rank, world
        self.settings = asdict(cfg) if settings is None else dict(settings)
        self.restart = restart
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.iteration = 0
        self.resumed_at = 0  # the first iteration this call runs
        self._rng: dict[str, Any] | None = None  # the generators' states last.pt kept (resume)
        self.history: list[dict[str, Any]] = []
        self.best_score = float("nan")
        self._tensorboard = None
        if self.rank == 0:
            try:  # optional: scalars for TensorBoard when it is installed
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                pass

    def progress(self, description: str) -> Progress:
        return progress_bar(description, disable=self.cfg.quiet or self.rank != 0)

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self) -> None:
        """last.pt as a "train_state" checkpoint (`models.io.save_checkpoint`): config = the run's
        settings, weights = the recipe's state, metadata = the iteration, the best score and the
        global generators' states (`rng_state`), written atomically by rank 0."""
        if self.rank != 0:
            return
        metadata = {
            "iteration": self.iteration,
            "best_score": float(self.best_score),  # a plain float: weights_only loads refuse numpy scalars
            "rng": rng_state(),
        }
        save_checkpoint(
            self.checkpoint_path(), "train_state", self.settings, self.recipe.state_dict(), metadata
        )

    def load_checkpoint(self) -> bool:
        """Resume from last.pt when it exists: the settings are compared first (every changed one is
        named), then the recipe's state is restored (the generators' states after `prepare`, see
        `train`). A last.pt in the layout from before checkpoint version 1 is refused: the error
        names the file (`models.io.load_checkpoint`); such a run starts over."""
        path = self.checkpoint_path()
        if not (self.cfg.resume and path.exists()):
            return False
        try:
            checkpoint = load_checkpoint(path, "train_state", "training resume state")
        except ValueError as exc:
            raise ValueError(f"{exc}; it cannot be resumed. {self.restart}") from exc
        changed = config_changes(checkpoint.config, self.settings, self.recipe.read_by)
        if changed:
            raise ValueError(
                f"{path}: this run was started with other settings ({'; '.join(changed)}); resuming would mix "
                f"two runs. {self.restart}"
            )
        try:
            self.recipe.load_state_dict(checkpoint.weights)
            self.iteration = int(checkpoint.metadata["iteration"])
            self.best_score = float(checkpoint.metadata.get("best_score", float("nan")))
            self._rng = checkpoint.metadata.get("rng")
        except Exception as exc:
            raise ValueError(f"{path}: cannot resume from this checkpoint ({exc})") from exc
        return True

    def _trim_log(self, start: int) -> None:
        """metrics.csv keeps only the rows before `start` (atomically): a resumed run logs again the
        iterations after its checkpoint, a fresh one (start 0) starts an empty log, so no iteration
        is ever listed twice and no earlier run's rows are mixed in."""
        path = self.out / "metrics.csv"
        if self.rank != 0 or not path.exists():
            return
        with path.open(newline="") as f:
            rows = list(csv.reader(f))

        def before(row: list[str]) -> bool:  # a torn or unreadable row (a crash mid-write) is dropped
            try:
                return len(row) == len(rows[0]) and int(float(row[0])) < start
            except ValueError:
                return False

        kept = [rows[0], *filter(before, rows[1:])] if rows and start else []
        if not kept:
            path.unlink()
            return
        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        atomic_write_text(path, buffer.getvalue())

    def _log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.history.append(row)
        path = self.out / "metrics.csv"
        score = [self.recipe.score_name] if self.recipe.score_name else []
        columns = ["iteration", "seconds_per_iter", *self.recipe.loss_terms, *score, "lr"]
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
        """Resume if a checkpoint exists, prepare, run the remaining iterations (evaluating every
        `eval_every` and at the end, checkpointing every `checkpoint_every` and at the end), then
        write the outputs and `summary.json`; returns the summary. A resumed single-process run
        gets the global generators' states of its checkpoint back after `prepare`. Under DDP they are
        not restored: batches come from (seed, iteration), but draws from the global generators
        (WISH's matching points) differ from an uninterrupted run after a resume."""
        c, recipe = self.cfg, self.recipe
        resumed = self.load_checkpoint()
        recipe.prepare()
        if resumed and self._rng is not None and self.world == 1:
            set_rng_state(self._rng)
        start = self.resumed_at = self.iteration + 1 if resumed else 0
        self._trim_log(start)
        timer, seconds = time.perf_counter(), []
        with self.progress(f"train {c.mode}") as progress:
            task = progress.add_task("train", total=c.iterations, completed=start, info="")
            for it in range(start, c.iterations):
                t0 = time.perf_counter()
                lr = scheduled_lr(c.lr, it, c.iterations, c.lr_schedule, c.lr_warmup)
                for group in recipe.optimizer.param_groups:
                    group["lr"] = lr
                terms = recipe.step(it)
                seconds.append(time.perf_counter() - t0)
                self.iteration = it
                row: dict[str, Any] = {"iteration": it, "seconds_per_iter": seconds[-1], "lr": lr} | terms
                last = it == c.iterations - 1
                if recipe.has_validation() and ((it + 1) % c.eval_every == 0 or last):
                    if self.rank == 0:
                        score = recipe.evaluate()["score"]
                        row[recipe.score_name] = score
                        self.best_score = float(np.nanmax([self.best_score, score]))
                    if dist.is_initialized():
                        dist.barrier()
                if it % c.log_every == 0 or recipe.score_name in row or last:
                    self._log(row)
                progress.update(
                    task,
                    advance=1,
                    info=f"loss {terms['total']:.3f}"
                    + (
                        f" {recipe.score_name} {row[recipe.score_name]:.3f}"
                        if recipe.score_name in row
                        else ""
                    ),
                )
                if (it + 1) % c.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        recipe.after_training()
        summary = self._finish(time.perf_counter() - timer, seconds)
        if dist.is_initialized():
            dist.barrier()
        return summary

    def _finish(self, elapsed: float, seconds: list[float]) -> dict[str, Any]:
        c, recipe = self.cfg, self.recipe
        final = recipe.evaluate() if recipe.has_validation() and self.rank == 0 else {}
        summary = {
            "mode": c.mode,
            "iterations": c.iterations,
            "seed": c.seed,
            "seconds": round(elapsed, 1),
            "seconds_per_iter": float(np.mean(seconds)) if seconds else None,
            "resumed_at": self.resumed_at,
            "weights_sha256": weights_digest(recipe.model),
            "parameters_sha256": weights_digest(recipe.model, parameters_only=True),
            "ddp_backend": dist.get_backend() if dist.is_initialized() else None,
        } | recipe.summary(final)
        if not seconds and self.rank == 0:
            summary = keep_measured(self.out / "summary.json", summary, getattr(recipe, "rerun_keeps", ()))
        if dist.is_initialized():
            atomic_write(
                self.out / f"rank{self.rank}.json", lambda tmp: Path(tmp).write_text(json.dumps(summary))
            )
        if self.rank == 0:
            recipe.save_outputs(self.out, final)
            atomic_write(
                self.out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1))
            )
        return summary
