"""Students behind one API whatever runs them (`models.student_runtime`): PyTorch checkpoints and
ONNX exports, semantic and instance, give the same answers; the export parity check passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx_export import model_roles
from export.tensorrt import STUDENT_BATCH, profile_shapes
from export.verify import verify
from models.instance_students import InstanceSegmenter, letterbox_pixels
from models.onnx_runtime import read_metadata
from models.student_runtime import checkpoint_task, load_segmenter
from models.students import IMAGE_MEAN, StudentSegmenter
from serving.config import SHIPPED_STUDENT


def test_checkpoint_task_and_runtime_choice(instance_checkpoint, instance_export, student_export) -> None:
    assert checkpoint_task(instance_checkpoint) == "instance"
    assert checkpoint_task(SHIPPED_STUDENT) == "semantic"
    assert load_segmenter(student_export).runtime == "onnx"  # no TensorRT here
    assert load_segmenter(SHIPPED_STUDENT).runtime == "torch"
    md = read_metadata(instance_export, kind="instance_student")
    assert md["input_side"] == 128 and md["class_names"] == ["person"] and model_roles(md) == ["student"]
    # TensorRT profiles: the instance student runs on its fixed canvas, batch 1..8
    assert profile_shapes("student", md)["images"] == tuple((b, 3, 128, 128) for b in STUDENT_BATCH)


@pytest.mark.parametrize(
    ("source", "runtime", "message"),
    [
        ("missing.pt", "auto", "no such student checkpoint"),
        ("shipped", "onnx", "needs an export directory"),
        ("export", "torch", "needs the .pt checkpoint"),
        ("shipped", "jit", "runtime 'jit' unknown"),
    ],
)
def test_load_segmenter_errors_name_the_problem(source, runtime, message, student_export) -> None:
    path = {"shipped": SHIPPED_STUDENT, "export": student_export}.get(source, source)
    with pytest.raises(ValueError, match=message):
        load_segmenter(path, runtime)


def test_semantic_onnx_equals_torch(student_export, camvid_image, scene) -> None:
    torch_student = load_segmenter(SHIPPED_STUDENT)
    onnx_student = load_segmenter(student_export, "onnx")
    assert (
        isinstance(onnx_student, StudentSegmenter) and onnx_student.class_names == torch_student.class_names
    )
    images = [camvid_image, scene, camvid_image[:201, :333]]
    for a, b in zip(torch_student.logits(images), onnx_student.logits(images), strict=True):
        assert a.shape == b.shape and float((a - b).abs().max()) < 1e-3
    for a, b in zip(torch_student.segment(images), onnx_student.segment(images), strict=True):
        assert np.mean(a == b) > 0.999


def test_instance_onnx_equals_torch(instance_checkpoint, instance_export, scene) -> None:
    torch_student = load_segmenter(instance_checkpoint)
    onnx_student = load_segmenter(instance_export)
    assert isinstance(onnx_student, InstanceSegmenter) and onnx_student.runtime == "onnx"
    images = [scene, scene[:100, :300], np.ascontiguousarray(scene.transpose(1, 0, 2))]
    expected = torch_student.segment(images, min_score=0.0)
    got = onnx_student.segment(images, min_score=0.0)
    for image, (m0, c0, s0), (m1, c1, s1) in zip(images, expected, got, strict=True):
        assert m0.shape[1:] == image.shape[:2] and len(s0) == 20  # 20 queries x 1 class
        np.testing.assert_allclose(s0, s1, atol=1e-4)
        assert np.array_equal(c0, c1) and np.mean(m0 == m1) > 0.999


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_instance_students_answer_zero_instances_with_empty_arrays(
    runtime, instance_checkpoint, instance_export, scene
) -> None:
    student = load_segmenter(instance_checkpoint if runtime == "torch" else instance_export, runtime)
    images = [scene, scene[:50, :70]]
    for top_k, min_score in ((0, 0.0), (0.0, 0.5), (np.int64(20), 1.0)):
        for image, (masks, classes, scores) in zip(
            images, student.segment(images, top_k=top_k, min_score=min_score), strict=True
        ):
            assert masks.shape == (0, *image.shape[:2]) and masks.dtype == bool
            assert classes.shape == scores.shape == (0,)


def test_letterbox_pads_with_the_mean_colour() -> None:
    image = np.full((50, 100, 3), 10, np.uint8)
    pad = torch.tensor(IMAGE_MEAN) * 255
    canvas, scaled = letterbox_pixels(image, 64, pad)
    assert canvas.shape == (3, 64, 64) and scaled == (32, 64)
    assert torch.allclose(canvas[:, :32], torch.tensor(10.0))
    assert torch.allclose(canvas[:, 32:], pad.view(3, 1, 1).expand(3, 32, 64))


def test_export_verify_of_an_instance_student(instance_export) -> None:
    cases = verify(instance_export, images=())
    assert cases and all(c.passed for c in cases), [
        (c.image, c.max_abs_diff, c.mask_agreement) for c in cases
    ]
    assert {c.prompts for c in cases} == {1, 3}  # batch 1 and 3 through the dynamic batch axis


@pytest.mark.gpu
def test_tensorrt_students_match_onnx(student_export, instance_export, tmp_path, scene) -> None:
    """Where TensorRT and a GPU exist: engines for a semantic and an instance student answer as
    ONNX Runtime does (the `auto` runtime picks them)."""
    import shutil

    pytest.importorskip("tensorrt")
    from export.tensorrt import build_engines

    for name, source in (("semantic", student_export), ("instance", instance_export)):
        work = tmp_path / name
        shutil.copytree(source, work)
        build_engines(work, fp16=False)
        trt_student, ort_student = load_segmenter(work), load_segmenter(work, "onnx", providers="cpu")
        assert trt_student.runtime == "tensorrt"
        if name == "semantic":
            a, b = trt_student.logits([scene])[0], ort_student.logits([scene])[0]
            assert float((a - b).abs().max()) < 1e-3
        else:
            (m0, c0, s0), (m1, c1, s1) = (
                trt_student.segment([scene], min_score=0.0)[0],
                ort_student.segment([scene], min_score=0.0)[0],
            )
            np.testing.assert_allclose(s0, s1, atol=1e-3)
            assert np.array_equal(c0, c1)
            assert np.mean(m0 == m1) > 0.999
            for top_k, min_score in ((0, 0.0), (0.0, 0.0), (50, 1.0)):  # zero instances: empty arrays
                masks, classes, scores = trt_student.segment([scene], top_k=top_k, min_score=min_score)[0]
                assert masks.shape == (0, *scene.shape[:2]) and classes.shape == scores.shape == (0,)
