"""A user's dataset folder for the quality benchmarks: `training.datasets.instance_dataset` reads
COCO, instance-PNG folders and Penn-Fudan from tiny folders written here, COCO's object sizes fall
at 32^2 and 96^2 pixels, bad formats, folders and splits are named in the error, and
`benchmarks/box2mask.py --root` writes per-size rows whose filled-box IoUs are known by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import COCO_SIZES, coco_size, instance_dataset, write_instance_folder
from training.samples import InstanceSample

REPO = Path(__file__).resolve().parents[1]


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image(h: int = 40, w: int = 60, value: int = 0) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def write_pennfudan(root: Path, count: int = 6) -> None:
    """`count` images; image k holds k + 1 pedestrians, pedestrian j a 2 x (j + 1) block."""
    for k in range(count):
        ids = np.zeros((40, 60), np.uint8)
        for j in range(k + 1):
            ids[2 * j : 2 * j + 2, : j + 1] = j + 1
        write_png(root / "PNGImages" / f"P{k:02d}.png", image(value=k))
        write_png(root / "PedMasks" / f"P{k:02d}_mask.png", ids)


def write_coco(root: Path, split: str = "val2017") -> None:
    """One 40x60 image: a 10x20 object (category 7) and a crowd region (category 3)."""
    from pycocotools import mask as rle

    def encoded(mask: np.ndarray) -> dict:
        out = rle.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": out["size"], "counts": out["counts"].decode()}

    obj, crowd = np.zeros((40, 60), bool), np.zeros((40, 60), bool)
    obj[5:15, 10:30] = True
    crowd[30:, 40:] = True
    write_png(root / split / "a.jpg", image())
    data = {
        "images": [{"id": 4, "file_name": "a.jpg", "height": 40, "width": 60}],
        "categories": [{"id": 3, "name": "crowdy"}, {"id": 7, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 7, "iscrowd": 0, "segmentation": encoded(obj)},
            {"id": 2, "image_id": 4, "category_id": 3, "iscrowd": 1, "segmentation": encoded(crowd)},
        ],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def test_pennfudan_format_reads_every_fifth_image_as_val(tmp_path: Path) -> None:
    write_pennfudan(tmp_path)
    val = instance_dataset(tmp_path, "pennfudan", "val")
    assert [s.stem for s in val] == ["P00", "P05"]
    assert [len(s.masks) for s in val] == [1, 6]
    assert [int(m.sum()) for m in val[1].masks] == [2, 4, 6, 8, 10, 12]
    assert len(instance_dataset(tmp_path, "pennfudan", "train")) == 4


def test_coco_format_maps_a_short_split_and_leaves_crowd_out(tmp_path: Path) -> None:
    write_coco(tmp_path)
    for split in ("val", "val2017"):
        (sample,) = instance_dataset(tmp_path, "coco", split)
        assert sample.image == tmp_path / "val2017" / "a.jpg"
        assert [int(m.sum()) for m in sample.masks] == [200]
        assert sample.class_ids == [1]  # category 7 is the second of ids 3, 7
        assert [int(m.sum()) for m in sample.crowd] == [200]


def test_folder_format_reads_what_write_instance_folder_wrote(tmp_path: Path) -> None:
    masks = [np.zeros((40, 60), bool), np.zeros((40, 60), bool)]
    masks[0][:3, :4] = True
    masks[1][10:30, 20:50] = True
    write_png(tmp_path / "src.png", image(value=9))
    sample = InstanceSample("im", tmp_path / "src.png", masks, [2, 5])
    write_instance_folder([sample], tmp_path / "data" / "val")
    (back,) = instance_dataset(tmp_path / "data", "folder", "val")
    assert back.stem == "im"
    assert back.class_ids == [2, 5]
    assert [int(m.sum()) for m in back.masks] == [12, 600]
    assert np.array_equal(back.load_image(), image(value=9))
    # one folder without splits: read whole with split "all", and "val" says how
    write_instance_folder([sample], tmp_path / "flat")
    assert len(instance_dataset(tmp_path / "flat", "folder", "all")) == 1
    with pytest.raises(ValueError, match=r"without splits.*'all'"):
        instance_dataset(tmp_path / "flat", "folder", "val")
    with pytest.raises(ValueError, match=r"no train/images/.*splits here: \['val'\]"):
        instance_dataset(tmp_path / "data", "folder", "train")


def test_bad_format_root_and_split_are_named(tmp_path: Path) -> None:
    write_coco(tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown dataset format 'voc'; choose one of \['coco', 'folder', 'pennfudan'\]"
    ):
        instance_dataset(tmp_path, "voc")
    with pytest.raises(ValueError, match="no such folder"):
        instance_dataset(tmp_path / "missing", "coco")
    with pytest.raises(ValueError, match=r"no instances_test.json; splits here: \['val2017'\]"):
        instance_dataset(tmp_path, "coco", "test")
    write_coco(tmp_path, "val2014")
    with pytest.raises(ValueError, match=r"'val' could be any of \['val2014', 'val2017'\]"):
        instance_dataset(tmp_path, "coco", "val")
    assert len(instance_dataset(tmp_path, "coco", "val2014")) == 1
    with pytest.raises(ValueError, match=r"annotations/instances_<split>\.json"):
        instance_dataset(tmp_path / "val2017", "coco")
    with pytest.raises(ValueError, match="PNGImages"):
        instance_dataset(tmp_path, "pennfudan")
    write_pennfudan(tmp_path / "pf")
    with pytest.raises(ValueError, match="split 'test' unknown"):
        instance_dataset(tmp_path / "pf", "pennfudan", "test")


@pytest.mark.parametrize(
    ("area", "size"),
    [(1, "small"), (32**2 - 1, "small"), (32**2, "medium"), (96**2 - 1, "medium"), (96**2, "large")],
)
def test_coco_sizes_by_mask_area(area: int, size: str) -> None:
    mask = np.zeros((100, 100), bool)
    mask.flat[np.random.default_rng(area).permutation(mask.size)[:area]] = True
    assert coco_size(mask) == size
    assert list(COCO_SIZES) == ["small", "medium", "large"]


def test_box2mask_on_a_folder_writes_per_size_rows(tmp_path: Path) -> None:
    """Three objects on one 200x200 image: a 10x10 square (small, filled-box IoU 1), a triangle in
    a 50x50 box (medium, 1275 pixels: IoU 0.51) and a 100x100 square (large, IoU 1)."""
    masks = [np.zeros((200, 200), bool) for _ in range(3)]
    masks[0][0:10, 0:10] = True
    rows, cols = np.mgrid[0:50, 0:50]
    masks[1][20:70, 20:70] = cols <= rows
    masks[2][100:200, 100:200] = True
    write_png(tmp_path / "src.png", image(200, 200))
    write_instance_folder(
        [InstanceSample("im", tmp_path / "src.png", masks, [0, 0, 0])], tmp_path / "data" / "val"
    )
    out = tmp_path / "table.md"
    run = subprocess.run(
        [
            *(
                sys.executable,
                "benchmarks/box2mask.py",
                "--root",
                str(tmp_path / "data"),
                "--format",
                "folder",
            ),
            *("--engines", "--baselines", "box", "--out", str(out)),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert masks[1].sum() == 1275
    expected = {
        "all": ("3", "0.837"),
        "small": ("1", "1.000"),
        "medium": ("1", "0.510"),
        "large": ("1", "1.000"),
    }
    table = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| data val")]
    assert {cells[2]: (cells[3], cells[4]) for cells in table} == expected
    assert all(cells[1] == "filled box" for cells in table)


def test_quality_benchmarks_give_the_sam_checkpoint_to_sam_backends_only(tmp_path: Path) -> None:
    """`--engines classical torch --sam-checkpoint X` compares the prior with SAM in one run: the
    prior is built without the checkpoint (it reads none, and refuses one)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import argparse

        from clicks import build_engines
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    args = argparse.Namespace(
        engines=["classical"],
        sam_type="vit_b",
        sam_checkpoint=__file__,  # a file: the SAM backends would load it, the prior must not see it
        export_dir=None,
        triton_url=None,
        device="cpu",
    )
    assert build_engines(args)["classical"].name == "classical"
