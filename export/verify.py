"""Parity of an export directory with the PyTorch model it came from.

SAM (SAM 1, SAM 2.1, the light SAM): the torch backend (`SamEngine`, `Sam2Engine`,
`LightSamEngine`, each proven equal to its reference predictor) vs the ONNX Runtime backend on real
images (scikit-image samples, plus any image files the caller names) and a random one, cropped to
three aspect ratios (landscape, portrait, square), with 1, 5 and 64 mixed prompts (points, boxes,
both), multimask on and off, then again with the reference's answers fed back as mask inputs. Reported per case: max abs diff of embeddings and of low-res mask
logits, agreement of the binarized full-size masks, max IoU-score diff.

Students: `predict_logits` of the source checkpoint vs `OnnxStudent` at several batch sizes and
image sizes (multiples of the stride and not): max abs diff of logits, argmax agreement.

A case fails when a logits or score diff exceeds `atol` or mask agreement falls below
`min_agreement`. Without mask inputs a SAM 1 / light export is judged on both of its decoders: the
many-prompt one the ONNX backend picks and the plain one TensorRT and Triton run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.config import lookup
from models.engine.types import Prompt
from models.runtime.onnx_runtime import ExportMetadata, load_export_metadata

PROMPT_COUNTS = (1, 5, 64)
SAMPLES = ("coffee landscape", "astronaut portrait", "chelsea square", "random 333x517")


@dataclass
class Case:
    model: str
    image: str
    size: tuple[int, int]
    prompts: int
    multimask: bool | None
    max_abs_diff: float  # low-res logits (SAM) or logits (student)
    embedding_diff: float | None
    mask_agreement: float  # binarized masks (SAM) or argmax (student)
    iou_diff: float | None
    mask_input: bool = False  # SAM: the prompts carried the reference's last answer as mask input
    passed: bool = True


@dataclass(frozen=True)
class Checks:
    """How one verification runs: tolerances, the sample images and a callback after each image."""

    atol: float = 1e-4
    min_agreement: float = 0.999
    seed: int = 0
    images: Sequence[str | Path] = ()  # the user's image files, besides the samples
    progress: Callable[[], Any] | None = None
    prompt_counts: tuple[int, ...] = PROMPT_COUNTS  # prompts per batch (SAM only)
    samples: int = len(SAMPLES)  # how many of the sample images (in `SAMPLES` order), 1..4

    def each_image(self) -> Iterator[tuple[str, np.ndarray]]:
        """The first `samples` sample images and the caller's (`sample_images`) by name; `progress`
        is called as each one is done."""
        for name, image in sample_images(self.seed, self.images, self.samples).items():
            yield name, image
            if self.progress is not None:
                self.progress()

    def judged(self, case: Case) -> Case:
        """`case`, failed when its logits or scores (IoU, instance scores) differ by more than `atol`
        or its masks agree less than `min_agreement` (image features are reported; they reach the
        verdict through the logits they make)."""
        diffs = (case.max_abs_diff, case.iou_diff)
        case.passed = (
            all(d is None or d <= self.atol for d in diffs) and case.mask_agreement >= self.min_agreement
        )
        return case


def sample_images(
    seed: int = 0, extra: Sequence[str | Path] = (), samples: int = len(SAMPLES)
) -> dict[str, np.ndarray]:
    """Real and random RGB images cropped to three aspect ratios (landscape, portrait, square; the
    first `samples` of `SAMPLES`), plus the user's `extra` image files (e.g. of their own domain)."""
    import skimage.data

    if not 1 <= samples <= len(SAMPLES):
        raise ValueError(f"samples must lie in 1..{len(SAMPLES)}, got {samples}")
    rng = np.random.default_rng(seed)
    images = {
        "coffee landscape": skimage.data.coffee(),  # 400x600
        "astronaut portrait": skimage.data.astronaut()[:, 100:400],  # 512x300
        "chelsea square": skimage.data.chelsea()[:, 60:360],  # 300x300
        "random 333x517": rng.integers(0, 256, (333, 517, 3), dtype=np.uint8),
    }
    images = {name: images[name] for name in SAMPLES[:samples]}
    if extra:
        from models.engine import read_image

        for path in extra:
            images[Path(path).name] = read_image(path)
    return {k: np.ascontiguousarray(v) for k, v in images.items()}


def random_prompts(count: int, size: tuple[int, int], rng: np.random.Generator) -> list[Prompt]:
    """`count` prompts of mixed kinds: 1-3 points, a box, or points with a box."""
    h, w = size
    out = []
    for i in range(count):
        kind = i % 3
        n = int(rng.integers(1, 4))
        pts = np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], 1)
        lbl = (rng.random(n) < 0.7).astype(np.int64)
        lbl[0] = 1
        x0, x1 = np.sort(rng.uniform(0, w - 1, 2))
        y0, y1 = np.sort(rng.uniform(0, h - 1, 2))
        box = np.array([x0, y0, x1, y1])
        if kind == 0:
            out.append(Prompt(points=pts, labels=lbl))
        elif kind == 1:
            out.append(Prompt(box=box))
        else:
            out.append(Prompt(points=pts, labels=lbl, box=box))
    return out


def reference_engine(md: ExportMetadata, checkpoint: str | Path | None) -> Any:
    """The torch engine of the model an export came from (its checkpoint, or its seeded random
    weights): `SamEngine`, `LightSamEngine` or `Sam2Engine`, each proven equal to its reference
    predictor by the parity tests."""
    from export.onnx_export import build_family_model, sam_family
    from models.engine.light_sam import LightSamEngine
    from models.engine.sam2_torch import Sam2Engine
    from models.engine.sam_torch import SamEngine

    source, sam_type = md["source"], md["sam_type"]
    checkpoint = checkpoint or source.get("checkpoint")
    model = build_family_model(sam_type, checkpoint, int(source.get("random_seed") or 0))
    engine = {"sam": SamEngine, "light": LightSamEngine, "sam2": Sam2Engine}[sam_family(sam_type)]
    return engine(model, name=f"torch-{sam_type}")


def _features(payload: Any) -> list[np.ndarray]:
    """The embedding and any high-res maps of a cached image, as arrays."""
    maps = [payload.embedding, *getattr(payload, "high_res", ())]
    return [m.float().numpy() if isinstance(m, torch.Tensor) else m for m in maps]


def verify_sam(md: ExportMetadata, checkpoint: str | Path | None, checks: Checks) -> list[Case]:
    """The torch backend on the source model (SAM, SAM 2.1 or the light SAM, from its checkpoint or
    its seeded random weights) vs the ONNX Runtime backend on the export: image features (embedding
    and high-res maps), low-res logits, masks and IoU scores; each prompt batch once as drawn and
    once more with the reference's best low-res logits fed back as mask inputs."""
    from models.engine.base import backend_payload
    from models.engine.sam_onnx import OnnxSamEngine

    reference = reference_engine(md, checkpoint)
    onnx = OnnxSamEngine(md)
    rng = np.random.default_rng(checks.seed)
    cases = []
    for name, image in checks.each_image():
        ref_handle = reference.embed([image])[0]
        onnx_handle = onnx.embed([image])[0]
        pairs = zip(
            _features(backend_payload(ref_handle.payload)), _features(backend_payload(onnx_handle.payload))
        )
        emb_diff = max(float(np.abs(a - b).max()) for a, b in pairs)
        for count in checks.prompt_counts:
            drawn = random_prompts(count, image.shape[:2], rng)
            for multimask in (True, False):
                prompts = drawn
                for fed_back in (False, True):
                    a = reference.predict(ref_handle, prompts, multimask)
                    answers = [onnx.predict(onnx_handle, prompts, multimask)]
                    if not fed_back and onnx.many_decoders:
                        # without mask inputs the many-prompt graph answers; the plain decoder's
                        # has_mask_input=0 path (what TensorRT and Triton run) is judged as well
                        many, onnx.many_decoders = onnx.many_decoders, {}
                        try:
                            answers.append(onnx.predict(onnx_handle, prompts, multimask))
                        finally:
                            onnx.many_decoders = many
                    case = Case(
                        model=f"{md.kind} {md['sam_type']}",
                        image=name,
                        size=image.shape[:2],
                        prompts=count,
                        multimask=multimask,
                        max_abs_diff=max(
                            float(np.abs(a.low_res_logits - b.low_res_logits).max()) for b in answers
                        ),
                        embedding_diff=emb_diff,
                        mask_agreement=min(float((a.masks == b.masks).mean()) for b in answers),
                        iou_diff=max(float(np.abs(a.iou - b.iou).max()) for b in answers),
                        mask_input=fed_back,
                    )
                    cases.append(checks.judged(case))
                    best = a.iou.argmax(1)
                    prompts = [
                        replace(p, mask_logits=a.low_res_logits[i, best[i]][None])
                        for i, p in enumerate(drawn)
                    ]
    return cases


def _source_checkpoint(md: ExportMetadata, checkpoint: str | Path | None) -> str | Path:
    """The checkpoint a student export came from: the one given, else the one metadata.json names."""
    checkpoint = checkpoint or md["source"].get("checkpoint")
    if not checkpoint:
        raise ValueError(f"{md.directory}: metadata names no student checkpoint; pass --checkpoint")
    return checkpoint


def verify_student(md: ExportMetadata, checkpoint: str | Path | None, checks: Checks) -> list[Case]:
    """`predict_logits` of the source checkpoint vs `OnnxStudent` at batch 1 (full size) and batch 3
    (half size, not a multiple of the stride): logits and their argmax."""
    from models.students.onnx_student import OnnxStudent
    from models.students.semantic import load_student, predict_logits

    model, _ = load_student(_source_checkpoint(md, checkpoint))
    runtime = OnnxStudent(md.directory)
    cases = []
    for name, image in checks.each_image():
        for batch, scale in ((1, 1.0), (3, 0.5)):
            h, w = (max(16, round(s * scale)) for s in image.shape[:2])
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = x.round().clamp(0, 255).repeat(batch, 1, 1, 1)
            ref = predict_logits(model, x).numpy()
            out = runtime.logits(x.numpy())
            case = Case(
                model=f"student {md['student']}",
                image=name,
                size=(h, w),
                prompts=batch,
                multimask=None,
                max_abs_diff=float(np.abs(ref - out).max()),
                embedding_diff=None,
                mask_agreement=float((ref.argmax(1) == out.argmax(1)).mean()),
                iou_diff=None,
            )
            cases.append(checks.judged(case))
    return cases


def verify_instance_student(md: ExportMetadata, checkpoint: str | Path | None, checks: Checks) -> list[Case]:
    """PyTorch vs ONNX Runtime for an instance student: the network's logits on the letterboxed
    canvases (batch 1 and 3), and the instances `InstanceSegmenter` makes from either: mask pixel
    agreement, and the largest score difference as `iou_diff`."""
    from models.students.instance import letterbox_pixels, load_instance_student, torch_instance_forward
    from models.students.runtime import load_segmenter

    model, meta = load_instance_student(_source_checkpoint(md, checkpoint))
    reference = torch_instance_forward(model)
    runtime = load_segmenter(md.directory, "onnx")
    side = int(md["input_side"])
    pad = torch.tensor(md["pad_value"])
    cases = []
    for name, image in checks.each_image():
        canvas, _ = letterbox_pixels(image, side, pad)
        for batch in (1, 3):
            x = canvas[None].repeat(batch, 1, 1, 1)
            ref_c, ref_m = reference(x)
            out_c, out_m = runtime.forward(x)
            diff = max(float((ref_c - out_c).abs().max()), float((ref_m - out_m).abs().max()))
            ref_i = runtime.__class__(reference, meta).segment([image], min_score=0.0)[0]
            out_i = runtime.segment([image], min_score=0.0)[0]
            agreement = float((ref_i[0] == out_i[0]).mean()) if ref_i[0].shape == out_i[0].shape else 0.0
            same = len(ref_i[2]) == len(out_i[2])
            score_diff = float(np.abs(ref_i[2] - out_i[2]).max(initial=0.0)) if same else 1.0
            case = Case(
                model=f"instance student {md['student']}",
                image=name,
                size=tuple(image.shape[:2]),
                prompts=batch,
                multimask=None,
                max_abs_diff=diff,
                embedding_diff=None,
                mask_agreement=agreement,
                iou_diff=score_diff,
            )
            cases.append(checks.judged(case))
    return cases


# export kind -> its verification (metadata, checkpoint or None, checks) -> cases
VERIFIERS: dict[str, Callable[[ExportMetadata, str | Path | None, Checks], list[Case]]] = {
    "sam": verify_sam,
    "sam2": verify_sam,
    "student": verify_student,
    "instance_student": verify_instance_student,
}


def verify(
    directory: str | Path | ExportMetadata, checkpoint: str | Path | None = None, **checks: Any
) -> list[Case]:
    """Verify any export directory (SAM, semantic or instance student); `checks` are `Checks`'
    fields (atol, min_agreement, seed, images, progress, prompt_counts, samples). metadata.json is read once
    here (not at all when its `ExportMetadata` is given) and handed down."""
    md = load_export_metadata(directory)
    return lookup(VERIFIERS, md.kind, "export kind")(md, checkpoint, Checks(**checks))


def as_rows(cases: list[Case]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cases]
