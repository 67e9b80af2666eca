"""How good WISH's mask targets are: IoU of the engine's three candidates with the true instance.

For every Penn-Fudan train instance, the weak label the protocol derives (one interior point, or the
tight box) prompts the engine once with multimask; the table gives the mean IoU of candidate 1, 2
and 3 against the instance's mask, of the best of the three (what Eq. 13's min can reach at best)
and of the one the engine scores highest. Backends side by side in one run: the classical prior
(the default here) and the previous region prior; a SAM checkpoint adds a row with `--sam-checkpoint`.

With `--student runs/wish/boxes_seed0/student.pt` it also counts which candidate the Hungarian
matching (Eq. 13's min) picks for that trained student's final layer on the train images' box
targets: the level the student has settled on.

Run: `python benchmarks/wish_targets.py [--limit 136] [--student PATH]`; writes
benchmarks/results/wish_targets.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.progress import track

from benchmarks.tables import markdown_table, write_table
from models.engine import EngineConfig, Prompt, build_engine
from training.budget import derive_instance_labels
from training.datasets import PennFudan

ROOT = Path(__file__).resolve().parents[1]
PENNFUDAN = ROOT.parent / "shared" / "data" / "pennfudan"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def measure(engine, samples, kind: str) -> np.ndarray:
    """Rows per instance: IoU of candidates 1-3, of the best one, of the top-scored one."""
    rows = []
    for s in track(samples, description=f"{engine.name} {kind}"):
        weak = derive_instance_labels(kind, s.masks, s.class_ids, s.size, seed=0, stem=s.stem)
        if kind == "points":
            prompts = [Prompt(points=np.array([[p.x, p.y]]), labels=np.ones(1, int)) for p in weak.points]
        else:
            prompts = [Prompt(box=np.array(b.box)) for b in weak.boxes]
        pred = engine.predict(engine.embed([s.load_image()])[0], prompts, multimask=True)
        for k, mask in enumerate(s.masks):
            ious = [iou(pred.masks[k, n], mask) for n in range(3)]
            rows.append([*ious, max(ious), ious[int(pred.iou[k].argmax())]])
    return np.asarray(rows)


def matched_levels(student: str, limit: int | None, labels: str = "boxes") -> list[int]:
    """How often the matching picks candidate 1, 2, 3 for a trained WISH student on train images."""
    import torch

    from models.students.instance import load_instance_student
    from training.trainer import InstanceTrainConfig, InstanceTrainer
    from training.wish import match

    model, meta = load_instance_student(student)
    cfg = InstanceTrainConfig(
        labels=labels,
        data_root=str(PENNFUDAN),
        input_side=int(meta.get("input_side", 320)),
        train_limit=limit,
        val_limit=1,
        out_dir=str(ROOT / "runs" / "wish_targets"),
        quiet=True,
        resume=False,
    )
    recipe = InstanceTrainer(cfg).recipe
    recipe.prepare()
    counts = [0, 0, 0]
    torch.manual_seed(0)
    with torch.no_grad():
        for item in recipe.items:
            classes, masks, prompts, _ = model.eval()(item.image[None])
            found = match(
                classes[-1, 0],
                masks[-1, 0],
                prompts[-1, 0],
                item.targets[0],
                torch.rand(1024, 2),
                recipe.weights,
            )
            for n in found.candidates.tolist():
                counts[n] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N train images")
    parser.add_argument("--sam-checkpoint", default=None, help="an official SAM vit_b checkpoint: adds a row")
    parser.add_argument("--student", default=None, help="a WISH boxes student: count the levels it matches")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wish_targets.md"))
    args = parser.parse_args()
    samples = PennFudan(PENNFUDAN, "train").samples()[: args.limit]
    configs = [EngineConfig(backend="classical"), EngineConfig(backend="classical-regions")]
    if args.sam_checkpoint:
        configs.append(EngineConfig(backend="torch", sam_type="vit_b", sam_checkpoint=args.sam_checkpoint))
    table = []
    for config in configs:
        engine = build_engine(config)
        for kind in ("points", "boxes"):
            r = measure(engine, samples, kind).mean(0)
            table.append([engine.name, kind, *(f"{v:.3f}" for v in r)])
    head = ["engine", "weak label", "IoU cand. 1", "IoU cand. 2", "IoU cand. 3", "best of 3", "top-scored"]
    note = (
        f"Penn-Fudan train ({len(samples)} images, {sum(len(s.masks) for s in samples)} people): mean IoU with "
        "the true instance of the engine's candidates for the WISH protocols' weak label (one interior point, "
        "or the tight box). Written by benchmarks/wish_targets.py."
    )
    lines = markdown_table(head, table)
    if args.student:
        counts = matched_levels(args.student, args.limit)
        lines += [
            "",
            f"Candidates the matching picks for `{Path(args.student).parent.name}` (boxes, train images):",
            "",
            *markdown_table(["candidate 1", "candidate 2", "candidate 3"], [[str(c) for c in counts]]),
        ]
    write_table(args.out, note, lines)


if __name__ == "__main__":
    main()
