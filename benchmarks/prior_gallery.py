"""Pictures of the classical prior at work: simulated clicks and boxes on Penn-Fudan val people.

For a few val objects (fixed choice: `--objects` stem:index pairs), each row shows the answer of
the prior after 1, 3 and 10 simulated clicks (the protocol of `benchmarks/clicks.py`; green dots
positive, red negative; IoU in the file's table), the previous prior (`classical-regions`) after 10
clicks, and both priors' answers to the tight box (yellow). Writes docs/images/prior_<n>.jpg and
prints the IoUs shown.

Run: `python benchmarks/prior_gallery.py [--objects FudanPed00001:0 ...]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from box2mask import tight_box
from clicks import load
from PIL import Image, ImageDraw

from models.engine import EngineConfig, Prompt, build_engine, read_image
from models.io import atomic_write
from models.jobs.visualize import overlay_masks, side_by_side
from training.interactive import ClickRun, mask_iou, simulate_clicks

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
SHOWN = (1, 3, 10)


def click_tile(
    image: np.ndarray, truth: np.ndarray, run: ClickRun, k: int, label: str
) -> tuple[np.ndarray, float]:
    """The answer after click k of a session (the last one if it stopped earlier, at a perfect
    answer) with its clicks drawn, captioned with `label` and the IoU; and that IoU."""
    k = min(k, len(run.answers))
    answer, clicks = run.answers[k - 1], run.clicks[:k]
    points = np.array([[c.x, c.y] for c in clicks])
    labels = np.array([int(c.positive) for c in clicks])
    iou = mask_iou(answer, truth)
    return captioned(
        overlay_masks(image, answer[None], points=points, labels=labels), f"{label} {iou:.2f}"
    ), iou


def captioned(picture: np.ndarray, text: str) -> np.ndarray:
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, 8 * len(text) + 8, 16], fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--objects", nargs="+", default=["FudanPed00006:0", "PennPed00012:0", "PennPed00052:1"]
    )
    args = parser.parse_args()
    samples = {s.stem: s for s in load("pennfudan", "val", None)}
    new, old = (
        build_engine(EngineConfig(backend="classical")),
        build_engine(EngineConfig(backend="classical-regions")),
    )
    OUT.mkdir(parents=True, exist_ok=True)
    for n, spec in enumerate(args.objects):
        stem, index = spec.split(":")
        if stem not in samples:
            raise SystemExit(f"--objects: {stem} is not a Penn-Fudan val image")
        image, truth = read_image(samples[stem].image), samples[stem].masks[int(index)]
        tiles, ious = [], []
        session = simulate_clicks(new, image, truth, max(SHOWN), keep_answers=True)
        previous = simulate_clicks(old, image, truth, max(SHOWN), keep_answers=True)
        for run, k, label in [
            *((session, k, f"{k} clicks") for k in SHOWN),
            (previous, max(SHOWN), "previous, 10:"),
        ]:
            tile, iou = click_tile(image, truth, run, k, label)
            tiles.append(tile)
            ious.append(iou)
        box = tight_box(truth)
        for engine, name in ((new, "box"), (old, "previous, box")):
            pred = engine.predict(image, [Prompt(box=box)])
            answer = pred.masks[0, int(np.argmax(pred.iou[0]))]
            ious.append(mask_iou(answer, truth))
            tiles.append(captioned(overlay_masks(image, answer[None], box=box), f"{name} {ious[-1]:.2f}"))
        path = OUT / f"prior_{n}.jpg"
        picture = Image.fromarray(side_by_side(tiles))
        # JPEG at two thirds of the size: legible, and light in the repository
        picture = picture.resize((picture.width * 2 // 3, picture.height * 2 // 3), Image.Resampling.LANCZOS)
        atomic_write(path, lambda tmp, picture=picture: picture.save(tmp, format="JPEG", quality=85))
        print(path.relative_to(ROOT), spec, " ".join(f"{v:.3f}" for v in ious))


if __name__ == "__main__":
    main()
