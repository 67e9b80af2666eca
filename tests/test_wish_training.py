"""WISH training: the student learns from points and from boxes; flips keep image, masks and prompt
latents in one frame on portrait images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.labels.schema import BoxLabel, PointLabel, WeakLabels, save_weak_labels
from tests.test_wish import _config, folder  # noqa: F401  (the module-scoped toy scene fixture)
from training.datasets import InstanceSample, write_instance_folder
from training.recipes.instance import flip_content, flip_points
from training.trainer import InstanceTrainer


# -- learning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["points", "boxes"])
def test_wish_learns_from_weak_labels(folder: Path, tmp_path, labels: str) -> None:  # noqa: F811
    """A few dozen WISH steps from one point (or box) per object, SAM (the classical prior) in the
    loop: mask AP50 on the scene rises far above the untrained student's."""
    settings = {
        "labels": labels,
        "iterations": 60,
        "eval_every": 60,
        "warmup_iterations": 0,
        "lr": 5e-4,
        "batch_size": 4,
    }
    untrained = InstanceTrainer(_config(folder, tmp_path / "untrained", **settings))
    before = untrained.recipe.evaluate()["AP50"]
    summary = InstanceTrainer(_config(folder, tmp_path / "trained", **settings)).train()
    after = summary["val"]["AP50"]
    assert summary["label_images"] == {labels: 10}
    assert before < 0.05, before  # a random student finds nothing
    assert after > before + 0.2, (before, after)


# -- flips on portrait images ---------------------------------------------------------------------
H, W = 64, 32  # portrait: the canvas (64 x 64) is twice as wide as the content
OBJECT = (slice(10, 30), slice(4, 14))  # rows 10..29, columns 4..13: centre x = 9.0, y = 20.0


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("portrait")
    image = np.full((H, W, 3), 120, np.uint8)
    image[OBJECT] = (230, 20, 20)
    mask = np.zeros((H, W), bool)
    mask[OBJECT] = True
    (root / "src").mkdir()
    Image.fromarray(image).save(root / "src" / "p0.png")
    write_instance_folder([InstanceSample("p0", root / "src" / "p0.png", [mask], [0])], root / "data")
    return root, root / "data"


def _object_columns(view: torch.Tensor) -> np.ndarray:
    """Columns of a normalised 3xSxS canvas where the red object is (red well above green)."""
    red = (view[0] - view[1] > 2.0).numpy()
    return np.flatnonzero(red.any(0))


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_portrait_flip_keeps_image_masks_and_latents_in_one_frame(portrait, tmp_path, kind: str) -> None:
    root, data = portrait
    weak = WeakLabels(H, W, instances=True)
    if kind == "points":
        weak.points = [PointLabel(9.0, 20.0, 0)]  # the object's centre
    else:
        weak.boxes = [BoxLabel(0, (4.0, 10.0, 14.0, 30.0))]
    save_weak_labels(weak, root / f"weak_{kind}", "p0")
    cfg = _config(data, tmp_path, train_weak=str(root / f"weak_{kind}"), val_root=None)
    recipe = InstanceTrainer(cfg).recipe
    recipe.prepare()
    item = recipe.items[0]
    assert item.content == (H, W)  # scale 1: the content is the image itself
    plain, flipped = recipe.view(0, False), recipe.view(0, True)
    # content stays top-left (as at inference): the padding columns are untouched by the flip
    assert torch.equal(flipped[:, :, W:], plain[:, :, W:])
    cols = _object_columns(flipped)
    assert cols.tolist() == list(range(W - 14, W - 4))  # columns 4..13 mirrored within 32: 18..27
    # the flipped SAM candidates lie on the flipped object
    masks = recipe.items[0].targets[1].masks[0]  # 3xSxS
    for candidate in masks:
        assert set(np.flatnonzero(candidate.numpy().any(0))) <= set(cols)
    # the flipped latent is the latent of the prompt where the flipped view shows the object
    centre_x = (cols[0] + cols[-1] + 1) / 2 / item.scale  # 23.0 in image pixels
    if kind == "points":
        expected = recipe.latents.points(np.array([[centre_x, 20.0]]), (H, W))
    else:
        half = 5.0
        expected = recipe.latents.boxes(np.array([[centre_x - half, 10.0, centre_x + half, 30.0]]), (H, W))
    assert torch.allclose(recipe.items[0].targets[1].prompts, expected, atol=1e-6)
    assert not torch.allclose(recipe.items[0].targets[0].prompts, expected, atol=1e-3)


def test_flip_helpers_on_a_hand_worked_row() -> None:
    t = torch.tensor([[1, 2, 3, 0, 0]])
    assert flip_content(t, 3).tolist() == [[3, 2, 1, 0, 0]]
    assert flip_points(np.array([[0.5, 7.0]]), 3).tolist() == [[2.5, 7.0]]
