"""The SAM family behind one engine, side by side in one run: encoder and decoder time and cache
bytes per image, in PyTorch and in ONNX Runtime (fp32, and with the dynamically quantized int8
encoder), with SAM 1 ViT-B on the torch backend as the baseline.

An engine is `TYPE` (torch) or `TYPE:onnx` / `TYPE:onnx-int8` (the export of the same seeded
weights, written once under runs/cache/sam_family/ by `sesam export sam`, quantized by `sesam export
quantize`). Each engine embeds one 480x360 CamVid val frame `--repeats` times (cache cleared
between, median kept), then decodes one click (multimask) and a batch of 16 clicks in one call
(median of `--repeats`). ONNX Runtime gets as many intra-op threads as torch. Weights are random and
seeded: speed does not depend on them, so these rows say nothing about quality; the int8 rows also
give the masks' IoU against the fp32 export's on the verification images (`export.quantize.fidelity`),
a measure of what quantization changes, not of quality. Writes benchmarks/results/sam_family.md.

Run: `python benchmarks/sam_family.py [--engines vit_b vit_b:onnx ...] [--repeats 3]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_image  # noqa: E402 (benchmarks/ is not a package)
from tables import markdown_table, write_table  # noqa: E402
from timing import median_seconds  # noqa: E402

from models.engine import Prompt  # noqa: E402

RUNTIMES = ("torch", "onnx", "onnx-int8")
# EfficientViT-SAM has no int8 row: its encoder is convolutions, which dynamic int8 leaves alone
# (`quantize_encoder` refuses it)
DEFAULT_ENGINES = [
    f"{t}{suffix}"
    for t in ("vit_b", "sam2.1_hiera_t", "sam2.1_hiera_b+", "efficientvit-sam-l0")
    for suffix in ("", ":onnx", ":onnx-int8")
    if not (t.startswith("efficientvit") and suffix == ":onnx-int8")
]
EXPORTS = ROOT / "runs" / "cache" / "sam_family"


def exported(sam_type: str, int8: bool) -> Path:
    """The export of `sam_type`'s seeded random weights (seed 0), written once and reused."""
    from export.onnx_export import export_sam_checkpoint
    from export.quantize import quantize_encoder
    from models.runtime.onnx_runtime import read_metadata

    out = EXPORTS / sam_type
    if not (out / "metadata.json").is_file():
        print(f"exporting {sam_type} to {out}", flush=True)
        export_sam_checkpoint(sam_type, None, out, random_seed=0)
    if int8 and "encoder_int8" not in read_metadata(out)["files"]:
        print(f"quantizing {sam_type}'s encoder", flush=True)
        quantize_encoder(out)
    return out


def build(name: str):
    """A random-weight engine by name (see the module's docstring)."""
    sam_type, _, runtime = name.partition(":")
    if runtime:
        if runtime not in RUNTIMES[1:]:
            raise SystemExit(f"{name}: runtime must be one of {RUNTIMES[1:]}")
        from models.engine.sam_onnx import OnnxSamEngine

        int8 = runtime == "onnx-int8"
        return OnnxSamEngine(
            exported(sam_type, int8),
            threads=torch.get_num_threads(),
            encoder_file="encoder_int8" if int8 else "encoder",
        )
    return build_torch(sam_type)


def build_torch(name: str):
    """A random-weight engine by name: SAM 1 types through the torch backend, SAM 2.1 through sam2,
    EfficientViT-SAM through the light backend."""
    from models.engine.light_sam import LIGHT_TYPES, LightSamEngine, build_light_sam
    from models.engine.modeling.sam2_build import build_sam2_model, is_sam2_type

    if name in LIGHT_TYPES:
        return LightSamEngine(build_light_sam(name), name=name)
    if is_sam2_type(name):
        from models.engine.sam2_torch import Sam2Engine

        return Sam2Engine(build_sam2_model(name, None, random_seed=0), name=name)
    from models.engine.modeling.build import build_sam
    from models.engine.sam_torch import SamEngine

    torch.manual_seed(0)
    return SamEngine(build_sam(name, None), name=name)  # no checkpoint: random init


def measure(name: str, image: np.ndarray, repeats: int) -> dict[str, float]:
    engine = build(name)
    model = getattr(engine, "model", None)
    params = sum(p.numel() for p in model.parameters()) / 1e6 if model is not None else float("nan")

    def embed() -> None:
        engine.cache.clear()
        engine.embed([image])

    encode = median_seconds(embed, repeats)[0]
    handle = engine.embed([image])[0]
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    clicks = [Prompt(points=rng.uniform([0, 0], [w, h], (1, 2)), labels=[1]) for _ in range(16)]
    engine.predict(handle, clicks[:1]), engine.predict(handle, clicks)  # warm-up: first runs of a shape
    one = median_seconds(lambda: engine.predict(handle, clicks[:1]), repeats)[0]
    many = median_seconds(lambda: engine.predict(handle, clicks), repeats)[0]
    fidelity = float("nan")
    if name.endswith(":onnx-int8"):
        from export.quantize import fidelity as int8_fidelity

        fidelity = int8_fidelity(engine.export_dir, prompts_per_image=8, int8=engine)[
            "mask_iou_int8_vs_fp32_mean"
        ]
    return {
        "params": params,
        "encode": encode,
        "one": one,
        "many": many,
        "cache": engine.payload_nbytes(handle.payload) / 2**20,
        "int8_iou": fidelity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sam_family.md"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    image = load_image()
    results = {}
    for name in args.engines:  # each row's figures print as it is done
        results[name] = measure(name, image, args.repeats)
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    base = results[args.engines[0]]
    rows = [
        [
            name + (" (baseline)" if name == args.engines[0] else ""),
            "-" if np.isnan(r["params"]) else f"{r['params']:.0f} M",
            f"{1000 * r['encode']:.0f}",
            f"{base['encode'] / r['encode']:.2f}x",
            f"{1000 * r['one']:.0f}",
            f"{1000 * r['many'] / 16:.1f}",
            f"{r['cache']:.0f}",
            "-" if np.isnan(r["int8_iou"]) else f"{r['int8_iou']:.3f}",
        ]
        for name, r in results.items()
    ]
    head = [
        "engine (random weights)",
        "params",
        "encoder ms / image",
        "encoder speed vs baseline",
        "decoder ms, 1 click",
        "decoder ms / click, 16 in one call",
        "cache MiB / image",
        "int8: mask IoU vs fp32",
    ]
    note = (
        f"One 480x360 CamVid val frame; median of {args.repeats} (decoders after one warm-up call of each "
        f"shape); CPU threads: {torch.get_num_threads()}; "
        "seeded random weights (speed only). `TYPE` runs in PyTorch, `TYPE:onnx` in ONNX Runtime (same "
        "threads), `TYPE:onnx-int8` with the dynamically quantized int8 encoder (its last column: mask IoU "
        "against the fp32 export over 4 images x 8 prompts). Decoder times include upsampling the masks to "
        "the image and their stability scores. Compare rows of one run."
    )
    write_table(args.out, note, markdown_table(head, rows))


if __name__ == "__main__":
    main()
