"""Zero instances is a normal answer: the shipped Penn-Fudan instance student, in PyTorch and through
its ONNX export, answers a blank image with empty arrays of the right shapes at any min_score and
top_k; min_score and top_k drop instances before any upsampling; `sesam segment` writes empty
answers when nothing passes its --min-score."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import models.students.instance as instance_students
from models.engine import read_image
from models.students.instance import InstanceSegmenter, instances_at_size, instances_from_outputs
from models.students.runtime import load_segmenter
from models.students.semantic import SHIPPED_INSTANCE_STUDENT
from tests.conftest import require_data

BLANK = np.zeros((64, 64, 3), np.uint8)


@pytest.fixture(scope="module")
def shipped_torch() -> InstanceSegmenter:
    student = load_segmenter(SHIPPED_INSTANCE_STUDENT)
    assert isinstance(student, InstanceSegmenter)
    return student


@pytest.fixture(scope="module")
def shipped_onnx(pennfudan_export) -> InstanceSegmenter:
    """The shipped instance student's ONNX export (conftest: exported once per session)."""
    student = load_segmenter(pennfudan_export, "onnx")
    assert isinstance(student, InstanceSegmenter) and student.runtime == "onnx"
    return student


@pytest.fixture(scope="module")
def pedestrian_files() -> list:
    folder = require_data("pennfudan") / "PNGImages"
    return sorted(folder.glob("*.png"))[:2]


def assert_empty(answer: tuple[np.ndarray, np.ndarray, np.ndarray], size: tuple[int, int]) -> None:
    masks, classes, scores = answer
    assert masks.shape == (0, *size) and masks.dtype == bool
    assert classes.shape == (0,) and np.issubdtype(classes.dtype, np.integer)
    assert scores.shape == (0,) and np.issubdtype(scores.dtype, np.floating)


def assert_consistent(
    answer: tuple[np.ndarray, np.ndarray, np.ndarray], size: tuple[int, int], top_k: int, min_score: float
) -> None:
    masks, classes, scores = answer
    assert masks.shape == (len(scores), *size) and masks.dtype == bool
    assert classes.shape == scores.shape and len(scores) <= top_k
    assert (scores >= min_score).all() and (scores[:-1] >= scores[1:]).all()


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_blank_image_gives_no_instances(runtime: str, request) -> None:
    student = request.getfixturevalue(f"shipped_{runtime}")
    wide = np.zeros((32, 48, 3), np.uint8)
    for answer, image in zip(student.segment([BLANK, wide]), [BLANK, wide], strict=True):
        assert_empty(answer, image.shape[:2])
    for min_score in (0.5, 1.0):
        assert_empty(student.segment([BLANK], min_score=min_score)[0], (64, 64))
    for top_k in (0, 0.0, np.int64(0)):
        assert_empty(student.segment([BLANK], top_k=top_k, min_score=0.0)[0], (64, 64))


def test_real_pedestrians_give_instances_in_both_runtimes(
    shipped_torch, shipped_onnx, pedestrian_files
) -> None:
    image = read_image(pedestrian_files[0])
    a, b = shipped_torch.segment([image])[0], shipped_onnx.segment([image])[0]
    assert len(a[2]) >= 1 and len(a[2]) == len(b[2])
    assert_consistent(a, image.shape[:2], 50, 0.05)
    np.testing.assert_allclose(a[2], b[2], atol=1e-3)
    assert np.array_equal(a[1], b[1]) and np.mean(a[0] == b[0]) > 0.999


@pytest.mark.parametrize("min_score", [0.0, 0.05, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("top_k", [0, 0.0, 1, 3.0, np.int32(5), 100])
def test_any_min_score_and_top_k_gives_consistent_shapes(
    shipped_torch, pedestrian_files, min_score, top_k
) -> None:
    image = read_image(pedestrian_files[1])
    answer = shipped_torch.segment([image], top_k=top_k, min_score=min_score)[0]
    assert_consistent(answer, image.shape[:2], int(top_k), min_score)
    if int(top_k) == 0 or min_score == 1.0:
        assert_empty(answer, image.shape[:2])


@pytest.mark.parametrize("top_k", [-1, 2.5, True, "3", float("nan")])
def test_bad_top_k_is_refused_with_its_value(shipped_torch, top_k) -> None:
    with pytest.raises(ValueError, match="top_k"):
        shipped_torch.segment([BLANK], top_k=top_k)


@pytest.mark.parametrize("min_score", [float("nan"), "0.5", None])
def test_bad_min_score_is_refused(shipped_torch, min_score) -> None:
    with pytest.raises(ValueError, match="min_score"):
        shipped_torch.segment([BLANK], min_score=min_score)


def test_segment_takes_top_k_and_min_score_by_name_only(shipped_torch) -> None:
    """`segment(images, 0.0)` once meant top_k=0.0 where min_score was meant (a TypeError deep in topk)."""
    with pytest.raises(TypeError):
        shipped_torch.segment([BLANK], 0.0)


def test_min_score_and_top_k_apply_before_upsampling(monkeypatch) -> None:
    torch.manual_seed(0)
    class_logits, mask_logits = torch.randn(10, 3), torch.randn(10, 8, 8) + 0.5  # 10 queries, 2 classes
    _, _, scores = instances_from_outputs(class_logits, mask_logits, top_k=20)
    assert len(scores) == 20
    upsampled: list[int] = []
    real = instance_students.F.interpolate

    def spy(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        upsampled.append(x.shape[1])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(instance_students.F, "interpolate", spy)
    cut = float(scores[6])
    cases = [(3, 0.0, 3), (20, cut, int((scores >= cut).sum())), (20, 1.0, 0), (0, 0.0, 0)]
    for top_k, min_score, kept in cases:
        upsampled.clear()
        masks, classes, found = instances_at_size(
            class_logits, mask_logits, (32, 32), (32, 20), (100, 62), top_k, min_score
        )
        assert masks.shape == (kept, 100, 62) and classes.shape == found.shape == (kept,)
        assert upsampled == ([kept, kept] if kept else [])  # only kept masks reach full size


def test_segment_cli_writes_empty_answers_when_nothing_passes(tmp_path, pedestrian_files) -> None:
    from sesam.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for path in pedestrian_files:
        shutil.copy(path, images / path.name)
    out = tmp_path / "out"
    args = ["segment", "--images", str(images), "--out", str(out), "--student", str(SHIPPED_INSTANCE_STUDENT)]
    assert main([*args, "--min-score", "1.0", "--report", "--quiet", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segmented"] == 2 and summary["failed"] == 0
    for path in pedestrian_files:
        answer = json.loads((out / f"{path.stem}.json").read_text())
        h, w = read_image(path).shape[:2]
        assert answer == {"width": w, "height": h, "instances": []}
        assert summary["per_image"][path.stem]["instances"] == 0
        assert (out / "overlays" / f"{path.stem}.png").is_file()
    assert (out / "report.html").is_file()
