"""Semantic students from weak labels: supervised | weak | fixmatch | naive-sam | sesam; and the
CAM classifier from image tags (cam).

- supervised: cross-entropy on dense ground truth (the upper bound).
- weak: partial cross-entropy on the weakly labelled pixels only.
- fixmatch: weak loss + pseudo-labels of an EMA teacher (confidence >= theta1) on the weak view,
  learned by the student on the strong view.
- naive-sam: weak loss + labels pre-generated once by the naive SAM labeler (cached on disk under a
  key of everything they depend on: the engine (model, working side, decoding options), the
  labeler's options, the weak labels and the image).
- sesam (paper 000): EMA teacher (0.999); every `sam_every` (M) iterations the weak labels of the
  batch's images, extended with teacher pixels of confidence >= `sesam.theta2`, are refined by the
  SeSAM labeler; loss = L_weak + w_sam L_SAM + w_pseudo L_pseudo with precedence weak > SAM > pseudo.
- cam: a CAM classifier (`models.students.cam`: the student's backbone + a 1x1 conv CAM head) trained on
  the images' tags with the multi-label loss on the GAP logits (`training.wish.cam_loss`, WISH's
  Eq. 17). Validation scores the CAM pseudo-labels (tags from the dense labels,
  `cam_pseudo_labels` at `cam_threshold`) by mIoU; the output is `cam.pt`.

SAM in the loop never re-encodes: every training image is embedded once, up front (the engine's
cache), prompts are made in ORIGINAL image coordinates (the teacher's view probabilities are
warped back), only the decoder runs, and the refined labels are warped into the augmented view.
Between refreshes an image keeps its latest SAM labels.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import from_mapping
from models.engine import build_engine
from models.io import UNLABELED, read_label_png, save_png
from models.labels import NaiveLabeler, NaiveOptions, SeSAMLabeler, SeSAMOptions, confident_labels
from models.labels.schema import WeakLabels
from models.labels.sesam import weak_fingerprint
from models.runtime.device import Precision, resolve_device, to_device
from models.students.cam import (
    CamClassifier,
    cam_pseudo_labels,
    normalise_cam,
    predict_cams,
    save_cam_classifier,
)
from models.students.semantic import build_student, normalize, pad_to_multiple, save_student
from training.augment import center_view
from training.data import WeakDataset, batch_indices, make_batch
from training.datasets import CAMVID_CLASSES
from training.embedded import EmbeddedImages, check_reencoding, engine_config
from training.loop import ddp_wrap
from training.losses import ema_decay, ema_update, partial_ce, sesam_loss, sesam_targets
from training.metrics import ConfusionMatrix
from training.protocols import class_ids_present
from training.wish import cam_loss

MODES = ("supervised", "weak", "fixmatch", "naive-sam", "sesam", "cam")
_WITH_SAM, _WITH_TEACHER = frozenset({"sesam", "naive-sam"}), frozenset({"fixmatch", "sesam"})
# settings only some modes read (the others ignore them): setting -> those modes
READ_BY = {
    **dict.fromkeys(("engine", "w_sam", "sam_class_balanced"), _WITH_SAM),
    **dict.fromkeys(("sesam", "sam_every", "w_pseudo"), frozenset({"sesam"})),
    "naive": frozenset({"naive-sam"}),
    **dict.fromkeys(("ema", "ema_warmup", "theta1", "student_view"), _WITH_TEACHER),
    "fixmatch_w_pseudo": frozenset({"fixmatch"}),
    **dict.fromkeys(("cam_output_stride", "cam_threshold"), frozenset({"cam"})),
}


def naive_cache_dir(out: Path, engine_answer_key: str, options: NaiveOptions) -> Path:
    """Where naive-sam labels live: one folder per (engine, labeler options), the engine as its
    `answer_key` (model, working side, decoding options), so labels made by another engine, at
    another size or with other options are never reused."""
    key = json.dumps({"engine": engine_answer_key, "options": options.__dict__}, sort_keys=True, default=str)
    return out / "naive_labels" / hashlib.sha256(key.encode()).hexdigest()[:16]


def naive_label_name(stem: str, weak: WeakLabels, image_key: str) -> str:
    """A naive-sam label's file name: the stem, and a hash of the weak labels' content and the
    image's (its cache key): other weak labels or other pixels under the same stem are redone."""
    digest = hashlib.sha256(f"{weak_fingerprint(weak)}:{image_key}".encode()).hexdigest()
    return f"{stem}-{digest[:16]}.png"


class SemanticRecipe:
    """The semantic task (CamVid-style class maps) in any of `MODES`."""

    read_by = READ_BY
    loss_terms = ("total", "weak", "sam", "pseudo")
    score_name = "val_miou"

    def __init__(
        self,
        cfg: Any,
        rank: int,
        world: int,
        progress,
        train_ds: WeakDataset | None = None,
        val_ds: WeakDataset | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.progress = progress
        self.out = Path(cfg.out_dir)
        self.train_ds = train_ds or self._load_train()
        self.val_ds = val_ds if val_ds is not None else self._load_val()
        self.device = resolve_device(cfg.device)
        self.precision = Precision(self.device, cfg.amp)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (drawn on the CPU)
        self.student = (
            CamClassifier(cfg.student, cfg.num_classes, cfg.cam_output_stride)
            if cfg.mode == "cam"
            else build_student(cfg.student, cfg.num_classes)
        ).to(self.device)
        self.teacher = copy.deepcopy(self.student).eval() if cfg.mode in _WITH_TEACHER else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        self.model: nn.Module = self.student
        self._forward_model: nn.Module = ddp_wrap(self.student, self.device)
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.sesam_options = from_mapping(SeSAMOptions, cfg.sesam, "sesam")
        self.sam_labels: dict[int, np.ndarray] = {}
        self.naive_labels: list[np.ndarray] | None = None
        self.engine = None
        self.embedded: EmbeddedImages | None = None
        self.labeler: SeSAMLabeler | None = None
        self._encoder_calls_after_prepare = 0

    # -- data ------------------------------------------------------------------------------------
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
        if c.val_images and c.val_gt:  # validation needs images and dense labels, no weak labels
            return WeakDataset.from_folders(c.val_images, None, c.val_gt, c.ignore_index, c.val_limit)
        return None

    # -- SAM -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Embed every training image once (sesam) or pre-generate naive labels (naive-sam)."""
        c = self.cfg
        if c.mode not in _WITH_SAM or self.engine is not None:
            return
        self.engine = build_engine(engine_config(c.engine, self.device))
        ds = self.train_ds
        # keys only: the engine's cache holds the embeddings within its budget (training.embedded)
        self.embedded = EmbeddedImages(self.engine, lambda i: ds.images[i])
        with self.progress("embed train images") as progress:
            task = progress.add_task("embed", total=len(ds), info=self.engine.name)
            for i in range(0, len(ds), 4):
                idx = list(range(i, min(i + 4, len(ds))))
                self.embedded.embed(idx, [ds.images[j] for j in idx])
                progress.advance(task, len(idx))
            note = self.embedded.budget_note()
            if note and self.rank == 0:
                progress.console.print(f"[yellow]{note}")
        self._encoder_calls_after_prepare = self.engine.stats.encoder_calls
        if c.mode == "sesam":
            self.labeler = SeSAMLabeler(self.engine, self.sesam_options)
            return
        options = from_mapping(NaiveOptions, c.naive, "naive")
        labeler = NaiveLabeler(self.engine, options)
        cache = naive_cache_dir(self.out, self.engine.answer_key, options)
        labels = []
        with self.progress("naive SAM labels") as progress:
            task = progress.add_task("naive", total=len(ds), info=self.engine.name)
            for i, stem in enumerate(ds.stems):
                path = cache / naive_label_name(stem, ds.weak[i], self.embedded.keys[i])
                if path.exists():
                    labels.append(read_label_png(path))
                else:
                    labels.append(labeler.refine(self.embedded.handle(i), ds.weak[i]).labels)
                    if self.rank == 0:
                        save_png(labels[-1], path)
                progress.advance(task)
        self.naive_labels = labels

    def after_training(self) -> None:
        if self.engine is not None:
            check_reencoding(self.engine, self.embedded, self._encoder_calls_after_prepare)

    # -- one step --------------------------------------------------------------------------------
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xhxw uint8 -> Bxkxhxw fp32 logits (the forward under autocast on CUDA)."""
        x, (h, w) = pad_to_multiple(normalize(images))
        with self.precision.autocast():
            logits = self._forward_model(x)
        return logits[..., :h, :w].float()

    @torch.no_grad()
    def _teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(normalize(images))
        with self.precision.autocast():
            logits = self.teacher(x)
        return logits[..., :h, :w].float().softmax(1)

    def _refresh_sam(self, batch, probs: torch.Tensor) -> None:
        """SeSAM labels for the batch's images in original coordinates, from the cached embeddings."""
        options = self.sesam_options
        probs = probs.cpu()  # the labeler works on host arrays
        confident = confident_labels(probs, options.theta2, class_axis=1).to(torch.uint8).numpy()  # view
        for j, idx in enumerate(batch.indices):
            view = batch.views[j]
            extension = view.labels_to_original(confident[j])  # 255 outside the view
            # the 'confidence' sampler reads the teacher's max probability (0 outside the view)
            confidence = (
                view.probs_to_original(probs[j]).max(0).values.numpy()
                if options.sampling == "confidence"
                else None
            )
            result = self.labeler.refine(
                self.embedded.handle(idx), self.train_ds.weak[idx], extension=extension, confidence=confidence
            )
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
        return to_device(torch.from_numpy(np.stack(maps)).long(), self.device)

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
        batch = make_batch(self.train_ds, indices, iteration, c.seed, c.crop, c.base_scale).to(self.device)
        self.student.train()
        if c.mode == "cam":
            tags = torch.zeros(len(indices), c.num_classes)
            for j, idx in enumerate(batch.indices):
                tags[j, [t for t in self.train_ds.weak[idx].tags if t < c.num_classes]] = 1
            x, _ = pad_to_multiple(normalize(batch.weak_images))
            with self.precision.autocast():
                cams = self._forward_model(x)
            terms = {"total": cam_loss(cams.float(), to_device(tags, self.device))}
        elif c.mode == "supervised":
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
            pseudo = confident_labels(probs, c.theta1, class_axis=1)
            if c.mode == "fixmatch":
                sam, w_sam, w_pseudo = None, 0.0, c.fixmatch_w_pseudo
            else:
                if iteration % c.sam_every == 0:
                    self._refresh_sam(batch, probs)
                sam, w_sam, w_pseudo = self._sam_targets(batch), c.w_sam, c.w_pseudo
            terms = self._semi_supervised_loss(batch, sam, pseudo, w_sam, w_pseudo)
        self.precision.step(terms["total"], self.optimizer)
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_decay(c.ema, iteration, c.ema_warmup))
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- evaluation ------------------------------------------------------------------------------
    def has_validation(self) -> bool:
        return self.val_ds is not None

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
                images = to_device(images.permute(0, 3, 1, 2), self.device)
                x, (h, w) = pad_to_multiple(normalize(images))
                if self.cfg.mode == "cam":
                    preds = self._cam_labels(model, images, group, size)
                else:
                    with self.precision.autocast():
                        logits = model(x)
                    logits = logits[..., :h, :w].float()
                    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
                    preds = logits.argmax(1).cpu().numpy().astype(np.uint8)
                for p, i in zip(preds, group, strict=True):
                    conf.update(p, ds.gt_map(i))
        miou = conf.miou()
        return {
            "score": miou,
            "miou": miou,
            "pixel_accuracy": conf.pixel_accuracy(),
            "per_class_iou": conf.iou_per_class(),
        }

    def _cam_labels(self, model: nn.Module, images: torch.Tensor, group: list[int], size) -> np.ndarray:
        """CAM pseudo-labels of validation images from the tags their dense labels give."""
        cams = F.interpolate(
            predict_cams(model, images).float(), size=size, mode="bilinear", align_corners=False
        ).cpu()
        ds, c = self.val_ds, self.cfg
        return np.stack(
            [
                cam_pseudo_labels(normalise_cam(cam), class_ids_present(ds.gt_map(i), None), c.cam_threshold)
                for cam, i in zip(cams, group, strict=True)
            ]
        )

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.state_dict(),
            "sam_labels": {int(k): torch.from_numpy(v) for k, v in self.sam_labels.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("scaler"))
        self.sam_labels = {int(k): v.numpy() for k, v in state["sam_labels"].items()}

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        return {
            "student": c.student,
            "kind": c.kind,
            "sam_class_balanced": c.sam_class_balanced,
            "val_miou": final.get("miou"),
            "val_per_class_iou": (
                [None if np.isnan(v) else float(v) for v in final["per_class_iou"]] if final else None
            ),
            "encoder_calls": self.engine.stats.encoder_calls if self.engine is not None else None,
            "reencoded_images": self.embedded.reencoded if self.embedded is not None else None,
            "device": str(self.device),
            "precision": self.precision.name,
            "images": len(self.train_ds),
        }

    def save_outputs(self, out: Path, final: dict[str, Any]) -> None:
        c = self.cfg
        names = (
            {"class_names": list(CAMVID_CLASSES)}
            if c.camvid_root and c.num_classes == len(CAMVID_CLASSES)
            else {}
        )
        if c.mode == "cam":
            extra = {
                "val_pseudo_miou": final.get("miou"),
                "iterations": c.iterations,
                "base_scale": c.base_scale,
            }
            save_cam_classifier(
                out / "cam.pt", self.student, extra | {"cam_threshold": c.cam_threshold} | names
            )
            return
        save_student(
            out / "student.pt",
            self.student,
            c.student,
            c.num_classes,
            extra={
                "val_miou": final.get("miou"),
                "mode": c.mode,
                "kind": c.kind,
                "iterations": c.iterations,
                "base_scale": c.base_scale,
            }
            | names,
        )
