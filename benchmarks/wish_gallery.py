"""Pictures of WISH on Penn-Fudan val: ground truth, the engine's box targets, and two students.

Columns: the true people; the classical prior's answer to each person's tight box (what a WISH box
target looks like: the candidate it scores highest); the supervised-instance student; the WISH
boxes student (both from `benchmarks/train_wish.py`, seed 0). Each student shows its K best-scored
instances, K = the number of true people (scores of the two students are not on one scale).
Writes docs/images/wish_<n>.jpg.

Run: `python benchmarks/wish_gallery.py [--images 0 5 9]` after benchmarks/train_wish.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from models.engine import EngineConfig, Prompt, build_engine
from models.io import atomic_write
from models.jobs.visualize import overlay_masks, side_by_side
from models.students.instance import InstanceSegmenter
from training.datasets import PennFudan
from training.protocols import tight_box

ROOT = Path(__file__).resolve().parents[1]
PENNFUDAN = ROOT.parent / "shared" / "data" / "pennfudan"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, nargs="+", default=[0, 5, 9], help="indices into PF val")
    parser.add_argument(
        "--supervised", default=str(ROOT / "runs" / "wish" / "supervised_seed0" / "student.pt")
    )
    parser.add_argument("--wish", default=str(ROOT / "runs" / "wish" / "boxes_seed0" / "student.pt"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = parser.parse_args()
    samples = PennFudan(PENNFUDAN, "val").samples()
    engine = build_engine(EngineConfig(backend="classical"))
    students = [InstanceSegmenter.from_checkpoint(p) for p in (args.supervised, args.wish)]
    for n, index in enumerate(args.images):
        s = samples[index]
        image = s.load_image()
        boxes = [tight_box(m) for m in s.masks]
        pred = engine.predict(
            engine.embed([image])[0], [Prompt(box=np.array(b)) for b in boxes], multimask=True
        )
        targets = pred.masks[np.arange(len(boxes)), pred.iou.argmax(1)]
        panels = [overlay_masks(image, np.stack(s.masks)), overlay_masks(image, targets)]
        for student in students:
            masks, _, _ = student.segment([image], top_k=len(s.masks), min_score=0.0)[0]
            panels.append(overlay_masks(image, masks))
        picture = side_by_side(panels)
        path = Path(args.out) / f"wish_{n}.jpg"
        atomic_write(path, lambda tmp, p=picture: Image.fromarray(p).save(tmp, format="JPEG", quality=85))
        print(f"wrote {path}: {s.stem}, {len(s.masks)} people")


if __name__ == "__main__":
    main()
