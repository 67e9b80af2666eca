"""ViT-B SAM: PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8 encoder; decoder 1 vs 64 prompts.

Decoder rows: our PyTorch decoder (`ManyPromptDecoder`, the baseline), the exported plain decoder
(segment-anything's formulation) and the exported many-prompt decoder (`decoder_many.onnx`), each
ONNX row with its parity against PyTorch (max |diff| of the low-res logits, mask agreement).
`--decoder-only` times only the decoders (writes export_decoder.md).

Baseline: the PyTorch encoder (`SamEngine`, segment-anything's modules) in the same run, same
images, same threads. Weights are random (seeded): speed does not depend on them. The int8 row
also reports how far its masks are from fp32 (same decoder, 16 prompts per image).

Run: `python benchmarks/export.py [--sam-type vit_b] [--repeats 3]`; writes
benchmarks/results/export.md. The export directory is kept (runs/export_vit_b) for
`sesam export verify runs/export_vit_b`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# run as a script, this file's folder comes first on sys.path and its name would hide the `export` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from export.onnx_export import build_seeded_sam, export_many_prompt_decoders, export_sam, write_metadata  # noqa: E402
from export.quantize import fidelity, quantize_encoder  # noqa: E402
from export.verify import random_prompts, sample_images  # noqa: E402
from models.engine.sam_onnx import OnnxSamEngine  # noqa: E402
from models.engine.sam_torch import SamEngine  # noqa: E402
from models.io import atomic_write_text  # noqa: E402
from models.runtime.onnx_runtime import read_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam-type", default="vit_b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument(
        "--out", default=None, help="default benchmarks/results/export.md (export_decoder.md)"
    )
    parser.add_argument("--decoder-only", action="store_true", help="time the decoders only")
    args = parser.parse_args()
    name = "export_decoder.md" if args.decoder_only else "export.md"
    args.out = args.out or str(ROOT / "benchmarks" / "results" / name)
    export_dir = Path(args.out_dir or ROOT / "runs" / f"export_{args.sam_type}")
    sam = build_seeded_sam(args.sam_type, 0)
    if not (export_dir / "metadata.json").is_file():
        t0 = time.perf_counter()
        export_sam(sam, export_dir, args.sam_type, random_seed=0)
        print(f"exported {args.sam_type} in {time.perf_counter() - t0:.0f} s")
    md = read_metadata(export_dir)
    if "decoder_many" not in md["files"]:  # an export from before the many-prompt decoders
        md["files"] |= export_many_prompt_decoders(sam, export_dir)
        write_metadata(export_dir, md)
    if "encoder_int8" not in md["files"] and not args.decoder_only:
        quantize_encoder(export_dir)

    image = sample_images()["coffee landscape"]
    torch_engine = SamEngine(sam, name=f"sam-{args.sam_type}", cache_bytes=0)
    fp32 = OnnxSamEngine(export_dir, cache_bytes=0)
    threads = torch.get_num_threads()
    rows = []
    if not args.decoder_only:
        int8 = OnnxSamEngine(export_dir, encoder_file="encoder_int8", cache_bytes=0)
        base = timed(lambda: torch_engine.embed([image]), args.repeats)
        rows.append(("encoder", "PyTorch fp32 (baseline)", base, 1.0, "-"))
        t = timed(lambda: fp32.embed([image]), args.repeats)
        rows.append(("encoder", "ONNX Runtime fp32", t, base / t, "-"))
        t = timed(lambda: int8.embed([image]), args.repeats)
        report = fidelity(export_dir, prompts_per_image=16, fp32=fp32, int8=int8)
        agreement = (
            f"{100 * report['mask_pixel_agreement_mean']:.2f}% pixels, mask IoU {report['mask_iou_int8_vs_fp32_mean']:.3f}, "
            f"embedding cosine >= {report['embedding_cosine_min']:.4f}"
        )
        rows.append(("encoder", "ONNX Runtime int8 (dynamic)", t, base / t, agreement))

    rng = np.random.default_rng(0)
    torch_handle, onnx_handle = torch_engine.embed([image])[0], fp32.embed([image])[0]
    many = fp32.many_decoders
    for count in (1, 64):
        prompts = [p for p in random_prompts(3 * count, image.shape[:2], rng) if p.box is None][:count]
        prompts = [type(p)(points=p.points[:1], labels=p.labels[:1]) for p in prompts]  # one layout: one call
        t_torch = timed(lambda ps=prompts: torch_engine.predict(torch_handle, ps), args.repeats)
        reference = torch_engine.predict(torch_handle, prompts)
        fp32.decode_batch = count
        part = f"decoder, {count} prompt(s) in one call"
        rows.append((part, "PyTorch (ManyPromptDecoder, baseline)", t_torch, 1.0, "-"))
        for label, decoders in (
            ("ONNX Runtime fp32, plain decoder", {}),
            ("ONNX Runtime fp32, many-prompt decoder", many),
        ):
            fp32.many_decoders = decoders
            t_onnx = timed(lambda ps=prompts: fp32.predict(onnx_handle, ps), args.repeats)
            out = fp32.predict(onnx_handle, prompts)
            diff = float(np.abs(out.low_res_logits - reference.low_res_logits).max())
            parity = f"max abs diff {diff:.1e}, masks agree {100 * float((out.masks == reference.masks).mean()):.3f}%"
            rows.append((part, label, t_onnx, t_torch / t_onnx, parity))
        fp32.many_decoders = many

    title = (
        f"SAM {args.sam_type} (random weights), {image.shape[0]}x{image.shape[1]} image, "
        f"{threads} torch threads, median of {args.repeats} after a warm-up; speed-up vs the PyTorch baseline row above it"
    )
    table = Table(title=title)
    for col in ("part", "runtime", "seconds", "speed-up", "fidelity (int8 vs fp32; ONNX vs PyTorch)"):
        table.add_column(col)
    lines = [
        title,
        "",
        "| part | runtime | seconds | speed-up | fidelity (int8 vs fp32; ONNX vs PyTorch) |",
        "|---|---|---|---|---|",
    ]
    for part, runtime, seconds, speedup, note in rows:
        table.add_row(part, runtime, f"{seconds:.3f}", f"{speedup:.2f}x", note)
        lines.append(f"| {part} | {runtime} | {seconds:.3f} | {speedup:.2f}x | {note} |")
    Console().print(table)
    atomic_write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
