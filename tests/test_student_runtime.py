"""Students behind one API whatever runs them (`models.students.runtime`): PyTorch checkpoints and
ONNX exports, semantic and instance, give the same answers; the export parity check passes."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from export.onnx_export import model_roles
from export.tensorrt import STUDENT_BATCH, profile_shapes
from export.verify import verify
from models.runtime.onnx_runtime import create_session, model_file, read_metadata
from models.runtime.tensorrt_runtime import (
    TensorRTUnavailable,
    engine_filename,
    find_engine,
    require_tensorrt,
)
from models.students.instance import InstanceSegmenter, letterbox_pixels
from models.students.runtime import checkpoint_task, has_tensorrt_engine, load_segmenter
from models.students.semantic import IMAGE_MEAN, StudentSegmenter
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
        ("shipped", "auto", "providers are read by the onnx runtime of an export directory only"),
    ],
)
def test_load_segmenter_errors_name_the_problem(source, runtime, message, student_export) -> None:
    path = {"shipped": SHIPPED_STUDENT, "export": student_export}.get(source, source)
    providers = "CPUExecutionProvider" if "providers" in message else None  # before: ignored for a .pt
    with pytest.raises(ValueError, match=message):
        load_segmenter(path, runtime, providers=providers)


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


# -- TensorRT: what runs without a GPU ------------------------------------------------------------
def _touch_engines(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"")


def test_find_engine_prefers_fp16_and_names_what_is_missing(tmp_path) -> None:
    fp16, fp32 = (engine_filename("student", "NVIDIA H200", "10.5.0", half) for half in (True, False))
    assert fp16 == "student.NVIDIA_H200.trt10.5.0.fp16.plan"
    _touch_engines(tmp_path, fp32)
    assert find_engine(tmp_path, "student", "NVIDIA H200", "10.5.0") == tmp_path / fp32  # fp32 when alone
    _touch_engines(tmp_path, fp16)
    assert find_engine(tmp_path, "student", "NVIDIA H200", "10.5.0") == tmp_path / fp16  # fp16 preferred
    assert find_engine(tmp_path, "student", "NVIDIA H200", "10.5.0", fp16=False) == tmp_path / fp32
    for gpu, version in (("NVIDIA A100", "10.5.0"), ("NVIDIA H200", "10.6.0")):  # other GPU or version
        with pytest.raises(ValueError, match=rf"no TensorRT engine for student built on '{gpu}'.*{version}"):
            find_engine(tmp_path, "student", gpu, version)


def test_require_tensorrt_names_what_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT is not installed.*sesam\[tensorrt\]"):
        require_tensorrt()
    fake = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # installed, but no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="needs a CUDA GPU"):
        require_tensorrt()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert require_tensorrt() is fake


def test_runtime_tensorrt_without_tensorrt_is_a_clear_error(monkeypatch, instance_export) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert not has_tensorrt_engine(instance_export)
    assert load_segmenter(instance_export).runtime == "onnx"  # auto falls back
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        load_segmenter(instance_export, "tensorrt")


class StandInEngine:
    """Stands in for `TensorRTModel` on the CPU: runs the export's ONNX graph with ONNX Runtime and
    lists its outputs in reverse order (an engine may list them in any order)."""

    built: ClassVar[list[Path]] = []
    runs: ClassVar[int] = 0

    def __init__(self, path: Path) -> None:
        StandInEngine.built.append(Path(path))
        directory = Path(path).parent
        self.session = create_session(model_file(directory, read_metadata(directory), "student"), "cpu")
        self.inputs = ["images"]
        self.outputs = [o.name for o in self.session.get_outputs()][::-1]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        StandInEngine.runs += 1
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_tensorrt_runtime_path_on_a_stand_in_engine(
    task, monkeypatch, tmp_path, student_export, instance_export, scene
) -> None:
    """Everything of the TensorRT student runtime but the engine itself: the lookup of this GPU's
    engine, the `auto` choice, the outputs put in the forward's order, and argument checks before
    any run; answers equal ONNX Runtime's on the same graph."""
    import shutil

    import models.runtime.tensorrt_runtime as trt_runtime

    work = tmp_path / task
    shutil.copytree(student_export if task == "semantic" else instance_export, work)
    _touch_engines(work, engine_filename("student", "Stand-in GPU", "10.5.0", False))
    monkeypatch.setattr(trt_runtime, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.5.0"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Stand-in GPU")
    monkeypatch.setattr(trt_runtime, "TensorRTModel", StandInEngine)
    monkeypatch.setattr(StandInEngine, "built", [])
    monkeypatch.setattr(StandInEngine, "runs", 0)
    student = load_segmenter(work)
    assert student.runtime == "tensorrt" and StandInEngine.built == [
        work / "student.Stand_in_GPU.trt10.5.0.fp32.plan"
    ]
    reference = load_segmenter(work, "onnx", providers="cpu")
    images = [scene, scene[:100, :300]]
    if task == "semantic":
        for a, b in zip(student.logits(images), reference.logits(images), strict=True):
            assert a.shape == b.shape and float((a - b).abs().max()) < 1e-5
        return
    for (m0, c0, s0), (m1, c1, s1) in zip(
        student.segment(images, min_score=0.0), reference.segment(images, min_score=0.0), strict=True
    ):
        assert len(s0) == 20 and np.array_equal(c0, c1) and np.mean(m0 == m1) > 0.9999
        np.testing.assert_allclose(s0, s1, atol=1e-6)
    runs = StandInEngine.runs
    for top_k, min_score in ((2.5, 0.0), (-1, 0.0), (True, 0.0), ("3", 0.0), (5, float("nan")), (5, None)):
        with pytest.raises(ValueError, match=r"top_k must be a whole number|min_score must be a number"):
            student.segment(images, top_k=top_k, min_score=min_score)
    assert StandInEngine.runs == runs  # refused before the engine ran
    for top_k, min_score in ((0, 0.0), (np.int64(20), 1.5)):
        for image, (masks, classes, scores) in zip(
            images, student.segment(images, top_k=top_k, min_score=min_score), strict=True
        ):
            assert masks.shape == (0, *image.shape[:2]) and classes.shape == scores.shape == (0,)


@pytest.mark.gpu
def test_tensorrt_students_match_onnx(student_export, instance_export, tmp_path, scene) -> None:
    """Where TensorRT and a GPU exist: fp32 engines for a semantic and an instance student answer as
    ONNX Runtime does on the same export (the `auto` runtime picks them)."""
    import shutil

    trt = pytest.importorskip("tensorrt")
    from export.tensorrt import build_engines

    gpu = torch.cuda.get_device_name(0)
    images = [scene, np.ascontiguousarray(scene[:100, :300])]  # batch 2 through the dynamic batch axis
    for name, source in (("semantic", student_export), ("instance", instance_export)):
        work = tmp_path / name
        shutil.copytree(source, work)
        assert build_engines(work, fp16=False) == {
            "student": engine_filename("student", gpu, trt.__version__, False)
        }
        trt_student, ort_student = load_segmenter(work), load_segmenter(work, "onnx", providers="cpu")
        assert trt_student.runtime == "tensorrt" and ort_student.runtime == "onnx"
        if name == "semantic":
            for a, b in zip(trt_student.logits(images), ort_student.logits(images), strict=True):
                assert a.shape == b.shape and float((a - b).abs().max()) < 1e-3
            continue
        # the raw forward on the letterboxed canvases, then the instances at each image's size
        canvases = torch.stack(
            [letterbox_pixels(i, trt_student.side, trt_student.pad_value)[0] for i in images]
        )
        for a, b in zip(trt_student.forward(canvases), ort_student.forward(canvases), strict=True):
            assert a.shape == b.shape and float((a - b).abs().max()) < 1e-3
        got = trt_student.segment(images, top_k=50, min_score=0.0)
        expected = ort_student.segment(images, top_k=50, min_score=0.0)
        for (m0, c0, s0), (m1, c1, s1) in zip(got, expected, strict=True):
            assert len(s0) == len(s1) == 20  # 20 queries x 1 class
            np.testing.assert_allclose(s0, s1, atol=1e-3)
            assert np.array_equal(c0, c1)
            for mask, score in zip(m0, s0, strict=True):  # near-equal scores may swap places
                near = [m for m, s in zip(m1, s1, strict=True) if abs(s - score) <= 1e-3]
                assert max(float(np.mean(mask == m)) for m in near) > 0.999
        best = float(got[0][2][0])
        assert len(trt_student.segment(images[:1], top_k=50, min_score=best)[0][2]) >= 1
        for top_k, min_score in ((0, 0.0), (np.int64(20), best + 1e-6)):  # zero instances: empty arrays
            masks, classes, scores = trt_student.segment(images[:1], top_k=top_k, min_score=min_score)[0]
            assert masks.shape == (0, *scene.shape[:2]) and classes.shape == scores.shape == (0,)
        with pytest.raises(ValueError, match="top_k must be a whole number"):
            trt_student.segment(images, top_k=2.5)
