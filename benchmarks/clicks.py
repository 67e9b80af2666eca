"""Interactive segmentation by simulated clicks: mIoU@k and NoC@85/90 with a 20-click cap.

Protocol (`training.interactive`): each ground-truth instance is one object; the first click is
positive at its interior-most pixel, each next click at the interior-most pixel of the largest
error region (positive on a miss, negative on a false alarm); the answer is the engine's
best-scored of 3 candidates at the first click and its single-mask answer after (SAM's own practice;
`--multimask always` keeps picking among 3), and its low-res logits are fed back as the next mask
input. Data: without `--root`, Penn-Fudan (`--split val`, every fifth image; settings are chosen on
`train`) and COCO-mini val2017 (crowd regions left out), a second domain; with `--root DIR --format
{coco,folder,pennfudan}`, a user's dataset (`training.datasets.instance_dataset`). `--limit N` keeps
the first N images, or N drawn with `--seed`.

Rows: every engine named by `--engines` (registered backends of `models.engine.ENGINE_BACKENDS`;
`classical` is the weight-free prior, `torch` SAM needs `--sam-checkpoint`) and the baselines of
`--baselines`: `walker`, a plain pixel random walker (scikit-image) at half resolution seeded by the
clicks (`--random-walker` is the same), the classical reference. No filled-disc floor: a click gives
no scale, so its radius would be a tuned setting, not a floor. Each row is broken down by COCO's
object sizes (small < 32^2, medium < 96^2, large >= 96^2 mask pixels) beside "all". Also reported:
how often the best-scored candidate is truly the best of the three (where the engine chose), how
often a click lowered the IoU, predict ms per click and embed s per image.

Run: `python benchmarks/clicks.py [--datasets pennfudan coco_mini | --root DIR --format F] [--split
S] [--limit N] [--engines ...] [--baselines walker]`; writes benchmarks/results/clicks.md (with
`--root`: clicks_<folder name>.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table
from tables import markdown_table, write_table

from models.engine import ENGINE_BACKENDS, CachedSegmenter, EngineConfig, build_engine
from models.engine.factory import SAM_BACKENDS
from training.datasets import COCO_SIZES, INSTANCE_FORMATS, InstanceSample, coco_size, instance_dataset
from training.interactive import Click, ClickRun, click_session, simulate_clicks, summarize

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
AT = (1, 3, 5, 10, 20)
SIZES = ("all", *COCO_SIZES)
# the project's own datasets (without --root): name -> (folder, format)
NAMED = {"pennfudan": (DATA / "pennfudan", "pennfudan"), "coco_mini": (DATA / "coco_mini", "coco")}


def pick(samples: list[InstanceSample], limit: int | None, seed: int | None) -> list[InstanceSample]:
    """The first `limit` samples, or (with `seed`) `limit` drawn at random, kept in dataset order."""
    if limit is None or limit >= len(samples):
        return samples
    if seed is None:
        return samples[:limit]
    chosen = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
    return [samples[i] for i in sorted(chosen)]


def load(dataset: str, split: str, limit: int | None, seed: int | None = None) -> list[InstanceSample]:
    """One of the project's datasets (`NAMED`) by name."""
    if dataset not in NAMED:
        raise ValueError(f"dataset {dataset!r} unknown; choose one of {sorted(NAMED)} or give --root")
    folder, format = NAMED[dataset]
    return pick(instance_dataset(folder, format, split), limit, seed)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, engine and output flags both quality benchmarks take."""
    data = parser.add_argument_group("data")
    data.add_argument("--root", type=Path, help="a dataset folder of your own (then --format)")
    data.add_argument("--format", choices=sorted(INSTANCE_FORMATS), help="the layout of --root")
    data.add_argument(
        "--datasets", nargs="+", default=list(NAMED), choices=list(NAMED), help="without --root"
    )
    data.add_argument(
        "--split",
        default="val",
        help="pennfudan: train, val (every fifth image) or all; coco: instances_<split>.json, or the one "
        "file the split begins (val -> val2017); folder: <root>/<split>/, or all for a folder without splits",
    )
    data.add_argument("--limit", "--limit-images", dest="limit", type=int, default=None, help="images")
    data.add_argument("--seed", type=int, default=None, help="draw the --limit images at random")
    engines = parser.add_argument_group("engines")
    engines.add_argument(
        "--engines",
        nargs="*",
        default=["classical", "classical-regions"],
        choices=sorted(ENGINE_BACKENDS),
        help="registered backends (none: baselines only)",
    )
    engines.add_argument("--sam-checkpoint", help="an official SAM checkpoint (the torch backend)")
    engines.add_argument("--sam-type", default="vit_b", help="vit_b, vit_l, vit_h, or tiny (tests)")
    engines.add_argument("--export-dir", help="an export directory (onnx, tensorrt, triton backends)")
    engines.add_argument("--triton-url", help="triton: the server's host:port")
    engines.add_argument("--device", default="cpu", help="torch: cpu, cuda, cuda:N or auto")
    parser.add_argument("--out", type=Path, help="the markdown table (default: benchmarks/results/)")


def datasets(args: argparse.Namespace) -> list[tuple[str, list[InstanceSample]]]:
    """(the table's dataset label, its samples) for --root or each of --datasets."""
    if args.root is None:
        if args.format is not None:
            raise SystemExit("--format describes --root; give --root too")
        return [
            (f"{name} {args.split}", load(name, args.split, args.limit, args.seed)) for name in args.datasets
        ]
    if args.format is None:
        raise SystemExit(f"--root needs --format, one of {sorted(INSTANCE_FORMATS)}")
    try:
        samples = instance_dataset(args.root, args.format, args.split)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return [(f"{args.root.name} {args.split}", pick(samples, args.limit, args.seed))]


def subset_note(args: argparse.Namespace) -> str:
    """The note's words on --limit and --seed ("" for every image)."""
    if args.limit is None:
        return ""
    if args.seed is None:
        return f" The first {args.limit} images of each dataset (--limit)."
    return f" {args.limit} images of each dataset drawn with seed {args.seed} (--limit, --seed)."


def out_path(args: argparse.Namespace, name: str) -> Path:
    """--out, else benchmarks/results/<name>.md (the project's data) or <name>_<folder name>.md."""
    if args.out is not None:
        return args.out
    return RESULTS / (f"{name}.md" if args.root is None else f"{name}_{args.root.name}.md")


def build_engines(args: argparse.Namespace) -> dict[str, CachedSegmenter]:
    """The engines of --engines (each a registered backend, with the SAM flags), by backend name."""
    out = {}
    for backend in args.engines:
        config = EngineConfig(
            backend=backend,
            sam_type=args.sam_type,
            sam_checkpoint=args.sam_checkpoint if backend in SAM_BACKENDS else None,  # the priors read none
            export_dir=args.export_dir,
            triton_url=args.triton_url,
            device=args.device,
        )
        try:
            out[backend] = build_engine(config)
        except ValueError as exc:
            raise SystemExit(f"engine {backend}: {exc}") from None
    return out


def engine_label(backend: str, engine: CachedSegmenter) -> str:
    """The row's method: the backend, and the model it runs where that says more (torch (sam-vit_b))."""
    return backend if engine.name == backend else f"{backend} ({engine.name})"


def by_size(masks: Sequence[np.ndarray]) -> dict[str, list[int]]:
    """Indices of `masks` per size of SIZES ("all" holds every index)."""
    groups: dict[str, list[int]] = {size: [] for size in SIZES}
    for i, mask in enumerate(masks):
        groups["all"].append(i)
        groups[coco_size(mask)].append(i)
    return groups


def publish(path: Path, note: str, head: Sequence[str], rows: list[list[str]]) -> None:
    """Print the rows as a table and write them as markdown under `note` to `path` (atomically)."""
    table = Table(*head, title=str(path))
    for cells in rows:
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a log file: no 80-column squeeze
        console = Console(width=200)
    console.print(table)
    write_table(path, note, markdown_table(head, rows), Console(quiet=True))


def random_walker_session(
    image: np.ndarray, truth: np.ndarray, max_clicks: int, beta: float = 130.0
) -> ClickRun:
    """The pixel random walker (scikit-image) at half resolution, seeded by the clicks (positive
    seeds label 1, negative label 2; with no negative click yet the image border seeds label 2)."""
    from skimage.segmentation import random_walker
    from skimage.transform import resize

    small = resize(image, (image.shape[0] // 2, image.shape[1] // 2), anti_aliasing=True)

    def answer(clicks: list[Click]) -> tuple[np.ndarray, bool | None]:
        seeds = np.zeros(small.shape[:2], np.int32)
        if all(c.positive for c in clicks):
            seeds[[0, -1], :] = 2
            seeds[:, [0, -1]] = 2
        for c in clicks:
            seeds[min(c.y // 2, seeds.shape[0] - 1), min(c.x // 2, seeds.shape[1] - 1)] = (
                1 if c.positive else 2
            )
        labels = random_walker(small, seeds, beta=beta, mode="cg_j", channel_axis=-1)
        return resize(labels == 1, truth.shape, order=0).astype(bool), None  # one answer, no choice

    return click_session(truth, answer, max_clicks)


def click_cells(runs: list[ClickRun], cap: int, chose: bool) -> list[str]:
    """The metric cells of one row: mIoU@k, NoC@85/90, best pick %, IoU drops %, ms per click."""
    at = [k for k in AT if k <= cap]
    if not runs:
        return ["-"] * (len(at) + 5)
    scores = summarize([r.ious for r in runs], AT, cap)
    picks = [p for r in runs for p in r.picked_best if p is not None]
    seconds = [t for r in runs for t in r.seconds]
    drops = [b < a - 1e-9 for r in runs for a, b in zip(r.ious, r.ious[1:])]
    return [
        *(f"{scores[f'miou@{k}']:.3f}" for k in at),
        f"{scores['noc@85']:.1f}",
        f"{scores['noc@90']:.1f}",
        f"{100 * np.mean(picks):.0f}" if chose and picks else "-",
        f"{100 * np.mean(drops):.1f}" if drops else "0.0",
        f"{1000 * np.median(seconds):.0f}" if seconds else "-",
    ]


BASELINES = {"walker": "random-walker"}  # flag -> the row's method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument(
        "--baselines", nargs="*", default=[], choices=list(BASELINES), help="walker: the pixel random walker"
    )
    parser.add_argument("--random-walker", action="store_true", help="the same as --baselines walker")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--multimask", default="first", choices=["first", "always"])
    args = parser.parse_args()
    baselines = list(dict.fromkeys([*args.baselines, *(["walker"] if args.random_walker else [])]))
    if not args.engines and not baselines:
        raise SystemExit("nothing to run: name --engines or --baselines")

    at = [k for k in AT if k <= args.max_clicks]
    head = [
        "dataset",
        "method",
        "size",
        "objects",
        *(f"mIoU@{k}" for k in at),
        "NoC@85",
        "NoC@90",
        "best pick %",
        "IoU drops %",
        "ms / click",
        "embed s",
    ]
    engines = build_engines(args)
    data = datasets(args)
    table = []
    for label, samples in data:
        images = {s.stem: s.load_image() for s in samples}
        sizes = by_size([truth for s in samples for truth in s.masks])
        block: dict[str, list[list[str]]] = {size: [] for size in SIZES}
        for method in [*engines, *baselines]:
            engine = engines.get(method)
            name = engine_label(method, engine) if engine is not None else BASELINES[method]
            runs: list[ClickRun] = []
            embed_seconds = []
            for s in track(samples, description=f"{label}: {name}", transient=True):
                if engine is not None:
                    start = time.perf_counter()
                    handle = engine.embed([images[s.stem]])[0]
                    embed_seconds.append(time.perf_counter() - start)
                for truth in s.masks:
                    if engine is None:
                        runs.append(random_walker_session(images[s.stem], truth, args.max_clicks))
                    else:
                        runs.append(
                            simulate_clicks(engine, handle, truth, args.max_clicks, multimask=args.multimask)
                        )
            for size, indices in sizes.items():
                group = [runs[i] for i in indices]
                embed = f"{np.median(embed_seconds):.2f}" if embed_seconds and size == "all" else "-"
                cells = click_cells(group, args.max_clicks, chose=engine is not None)
                block[size].append([label, name, size, str(len(group)), *cells, embed])
            row = block["all"][-1]
            Console().print(
                ", ".join(
                    [f"{label} {name}: {row[3]} objects"] + [f"{h} {c}" for h, c in zip(head[4:], row[4:])]
                )
            )
        table += [row for size in SIZES for row in block[size]]

    note = (
        f"Simulated clicks (cap {args.max_clicks}, {args.split} split), previous logits fed back, multimask "
        f"{args.multimask}, each ground-truth instance one object (COCO crowd regions left out); `classical` is "
        "the weight-free prior (a seeded random walk) and `classical-regions` the previous one, neither is SAM; "
        "`random-walker`: scikit-image's pixel random walker seeded by the clicks at half resolution. Sizes as "
        "COCO's (mask pixels: small < 32^2, medium < 96^2, large); 'all' is every object. 'IoU drops': clicks "
        "after which IoU fell. Medians for times (embed: per image, on the 'all' row), this machine."
        + subset_note(args)
    )
    publish(out_path(args, "clicks"), note, head, table)


if __name__ == "__main__":
    main()
