from __future__ import annotations

import json

import numpy as np
from PIL import Image

from sesam.cli import main


def test_predict_writes_masks_and_overlay(tmp_path, scene, capsys) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--image",
            str(image),
            "--point",
            "120,130",
            "--negative",
            "330,250",
            "--out",
            str(out),
            "--backend",
            "classical",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "classical" and len(summary["iou"]) == 3
    masks = [np.asarray(Image.open(out / f"scene_mask{j}.png")) > 0 for j in range(3)]
    assert all(m[130, 120] and not m[250, 330] for m in masks)
    assert np.asarray(Image.open(out / "scene_overlay.png")).shape == (360, 480, 3)


def test_predict_reports_bad_input(tmp_path, scene, capsys) -> None:
    image = tmp_path / "scene.png"
    Image.fromarray(scene).save(image)
    code = main(
        [
            "predict",
            "--image",
            str(image),
            "--point",
            "9999,1",
            "--out",
            str(tmp_path),
            "--backend",
            "classical",
        ]
    )
    assert code == 2
    assert "lies outside the 480x360 image" in capsys.readouterr().err
    assert main(["predict", "--image", str(tmp_path / "nope.jpg"), "--point", "1,1"]) == 2


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "predict" in capsys.readouterr().out
