"""Export to ONNX (SAM, students), verification, int8, TensorRT's pure parts, Triton repositories."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from export.onnx_export import export_student_module
from export.sam_modules import SamDecoderOnnx
from export.triton import model_config, write_repository
from export.verify import verify
from models.engine.modeling.build import sha256_of
from models.runtime.onnx_runtime import read_metadata
from models.students.onnx_student import OnnxStudent
from models.students.semantic import build_student, predict_logits, save_student, student_registry
from sesam.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "students" / "weights" / "camvid_student.pt"


def test_metadata_describes_the_export(tiny_export: Path) -> None:
    md = read_metadata(tiny_export, kind="sam")
    assert md["sam_type"] == "tiny" and md["opset"] == 18 and md["image_size"] == 1024
    assert md["embedding_shape"] == [256, 64, 64]
    for entry in md["files"].values():
        assert sha256_of(tiny_export / entry["path"]) == entry["sha256"]
    assert {"torch", "onnx"} <= set(md["versions"])
    with pytest.raises(ValueError, match="holds a 'sam' export, expected 'student'"):
        read_metadata(tiny_export, kind="student")


@pytest.mark.parametrize("size", [(300, 500), (500, 300), (257, 257)])
def test_decoder_module_has_no_size_baked_in(tiny_sam, size) -> None:
    """The wrapper's full-size masks equal SAM's own postprocess at any aspect ratio."""
    from segment_anything.utils.transforms import ResizeLongestSide

    dec = SamDecoderOnnx(tiny_sam).eval()
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.tensor([[[40.0, 60.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, -1.0]])
    with torch.no_grad():
        masks, _, low = dec(
            emb, coords, labels, torch.zeros(1, 1, 256, 256), torch.zeros(1), torch.tensor(size)
        )
        input_size = ResizeLongestSide(1024).get_preprocess_shape(*size, 1024)
        ref = tiny_sam.postprocess_masks(low, input_size, size)
    assert masks.shape[-2:] == size
    torch.testing.assert_close(masks, ref, atol=1e-4, rtol=0)


def test_verify_sam_passes_and_fails_over_tolerance(tiny_export: Path, capsys, monkeypatch) -> None:
    import models.runtime.onnx_runtime as onnx_runtime

    reads = []  # metadata.json is read once per verification and handed down (to the ONNX engine)

    def counting(text: str) -> object:
        reads.append(text)
        return json.loads(text)

    monkeypatch.setattr(onnx_runtime, "json", SimpleNamespace(loads=counting, JSONDecodeError=ValueError))
    cases = verify(tiny_export, prompt_counts=(1, 5))
    assert len(reads) == 1
    sizes = {c.size for c in cases}
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes) and any(h == w for h, w in sizes)
    assert all(c.passed for c in cases), [c for c in cases if not c.passed]
    assert max(c.max_abs_diff for c in cases) < 1e-4
    # the command exits non-zero when the tolerance cannot be met
    assert main(["export", "verify", str(tiny_export), "--prompts", "1", "--atol", "0"]) == 1
    assert "cases over tolerance" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fixture, kind, side, outputs",
    [
        ("sam2_export", "sam2", 1024, ["image_embeddings", "high_res_0", "high_res_1"]),
        ("light_export", "sam", 512, ["image_embeddings"]),
    ],
)
def test_sam_family_exports_verify(fixture: str, kind: str, side: int, outputs: list[str], request) -> None:
    """SAM 2.1 and the light SAM through `sesam export verify`: features, logits (with and without
    the last answer fed back as mask input), masks and scores equal the torch engines'."""
    import onnxruntime as ort

    directory = request.getfixturevalue(fixture)
    md = read_metadata(directory)
    assert md["kind"] == kind and md["image_size"] == side and md["prompt_size"] == 1024
    assert md["preprocess"]["resize"] == ("stretch" if kind == "sam2" else "longest_side")
    session = ort.InferenceSession(str(directory / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == outputs
    assert session.get_inputs()[0].shape[1:] == [3, side, side]
    cases = verify(directory, prompt_counts=(3,), samples=2)  # a landscape and a portrait image
    assert {c.image for c in cases} == {"coffee landscape", "astronaut portrait"}
    assert {c.mask_input for c in cases} == {False, True} and {c.multimask for c in cases} == {False, True}
    assert all(c.passed for c in cases), [c for c in cases if not c.passed]
    assert max(c.embedding_diff for c in cases) < 1e-4


def test_each_written_graph_reports_progress(tmp_path: Path) -> None:
    """`graph_progress` hears of every graph an export writes, by file name, and only inside it."""
    from export.onnx_export import _onnx_export, graph_progress

    heard: list[str] = []
    dim = torch.export.Dim("batch", min=1, max=8)
    with graph_progress(heard.append):
        for name in ("a.onnx", "b.onnx"):
            args = (torch.zeros(2, 3),)
            _onnx_export(torch.nn.Linear(3, 2), args, tmp_path / name, ["x"], ["y"], {"input": {0: dim}})
    _onnx_export(
        torch.nn.Linear(3, 2), (torch.zeros(2, 3),), tmp_path / "c.onnx", ["x"], ["y"], {"input": {0: dim}}
    )
    assert heard == ["a.onnx", "b.onnx"] and (tmp_path / "c.onnx").is_file()


def test_sam2_prompts_are_packed_as_its_predictor_packs_them() -> None:
    """SAM 2: box corners first, then clicks, then the padding point always; SAM 1: clicks, then the
    box, the padding point only without one."""
    from models.engine import Prompt
    from models.engine.exported import pack_prompts

    prompt = Prompt(points=[[5, 6], [7, 8]], labels=[1, 0], box=[1, 2, 3, 4])
    sam2 = pack_prompts([prompt], box_first=True)
    assert sam2["point_coords"][0].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [0, 0]]
    assert sam2["point_labels"][0].tolist() == [2, 3, 1, 0, -1]
    sam1 = pack_prompts([prompt])
    assert sam1["point_labels"][0].tolist() == [1, 0, 2, 3]
    assert pack_prompts([Prompt(points=[[5, 6]], labels=[1])])["point_labels"][0].tolist() == [1, -1]


def test_sam2_triton_and_tensorrt_shapes_follow_the_metadata() -> None:
    from export.tensorrt import profile_shapes

    md = {
        "kind": "sam2",
        "image_size": 1024,
        "encoder_outputs": {
            "image_embeddings": [256, 64, 64],
            "high_res_0": [32, 256, 256],
            "high_res_1": [64, 128, 128],
        },
    }
    dec = profile_shapes("decoder", md)
    assert dec["high_res_0"] == ((1, 32, 256, 256),) * 3 and dec["high_res_1"] == ((1, 64, 128, 128),) * 3
    # every prompt the service accepts fits: its point limit, a box's two corners, SAM 2's padding point
    assert dec["point_labels"][-1] == (256, 64 + 3)
    assert profile_shapes("decoder", md | {"limits": {"points": 10}})["point_coords"][-1] == (256, 13, 2)
    assert profile_shapes("encoder", {"image_size": 512})["images"][0] == (1, 3, 512, 512)
    enc = _parse_config(model_config("encoder", "sam_encoder", "onnxruntime_onnx", metadata=md))
    assert [o.name for o in enc.output] == ["image_embeddings", "high_res_0", "high_res_1"]
    assert list(enc.output[1].dims) == [32, 256, 256]
    dec_cfg = _parse_config(model_config("decoder", "sam_decoder", "onnxruntime_onnx", metadata=md))
    assert [i.name for i in dec_cfg.input][:3] == ["image_embeddings", "high_res_0", "high_res_1"]


def test_shipped_student_exports_and_verifies(student_export: Path) -> None:
    md = read_metadata(student_export, kind="student")
    assert md["student"] == "fpn-mobilenetv2" and md["num_classes"] == 11
    cases = verify(student_export)
    assert all(c.passed for c in cases), [c for c in cases if not c.passed]
    assert {c.prompts for c in cases} == {1, 3}  # batch sizes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(student_registry))
def test_every_student_exports_with_dynamic_batch_and_size(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student(name, 5).eval()
    save_student(tmp_path / "s.pt", model, name, 5)
    export_student_module(model, tmp_path / "onnx", {"name": name, "num_classes": 5}, tmp_path / "s.pt")
    runtime = OnnxStudent(tmp_path / "onnx")
    for shape in ((1, 3, 64, 96), (2, 3, 70, 45)):
        x = torch.randint(0, 256, shape).float()
        ref = predict_logits(model, x).numpy()
        out = runtime.logits(x.numpy())
        assert out.shape == ref.shape
        # random-init students reach large logits: compare relative to their scale
        assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
        assert (out.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_int8_encoder_and_fidelity(tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    from export.quantize import fidelity, quantize_encoder
    from models.engine.sam_onnx import OnnxSamEngine

    work = tmp_path / "export"
    shutil.copytree(tiny_export, work)
    quantize_encoder(work)
    entry = read_metadata(work)["files"]["encoder_int8"]
    assert int(entry["quantization"].split(": ")[1].split()[0]) > 0  # "...: N ops", N integer ops
    engine = OnnxSamEngine(work, encoder_file="encoder_int8")
    assert engine.name == "onnx-encoder_int8" and engine.namespace != OnnxSamEngine(work).namespace
    report = fidelity(work, prompts_per_image=2)
    assert report["embedding_cosine_min"] > 0.99 and report["mask_pixel_agreement_mean"] > 0.95


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an export directory"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metadata\.json: cannot read"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "sesam-onnx/1", "kind": "video"}))
    with pytest.raises(ValueError, match=r"metadata\.json: unknown export kind 'video'; choose one of \["):
        read_metadata(tmp_path)
    sam = {"format": "sesam-onnx/1", "kind": "sam", "files": {}, "source": {}, "sam_type": "tiny"}
    (tmp_path / "metadata.json").write_text(json.dumps(sam))
    with pytest.raises(
        ValueError, match=r"metadata\.json: a 'sam' export needs 'image_size', which is missing"
    ):
        read_metadata(tmp_path)
    sam |= {"image_size": "big", "pixel_mean": [0, 0, 0], "pixel_std": [1, 1, 1], "mask_threshold": 0.0}
    (tmp_path / "metadata.json").write_text(json.dumps(sam))
    with pytest.raises(ValueError, match=r"metadata\.json: image_size = 'big', expected int"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps(sam | {"image_size": 1024}))
    with pytest.raises(ValueError, match=r"metadata\.json: no file registered as 'encoder'"):
        read_metadata(tmp_path)
    assert main(["export", "sam", "--sam-type", "vit_b", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "student", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2


# -- TensorRT: what runs without it ---------------------------------------------------------------
def test_tensorrt_names_profiles_and_precision() -> None:
    from export.tensorrt import keep_fp32, profile_shapes, shape_input_values
    from models.runtime.tensorrt_runtime import engine_filename

    name = engine_filename("encoder", "NVIDIA H100 80GB HBM3", "10.5.0", True)
    assert name == "encoder.NVIDIA_H100_80GB_HBM3.trt10.5.0.fp16.plan"
    assert engine_filename("decoder", "x", "10.0", False).endswith(".fp32.plan")
    enc = profile_shapes("encoder")["images"]
    assert [s[0] for s in enc] == [1, 4, 8] and all(s[1:] == (3, 1024, 1024) for s in enc)
    dec = profile_shapes("decoder")
    assert [s[0] for s in dec["point_coords"]] == [1, 64, 256]
    # up to the export's point limit (64) plus a box's two corners and SAM 2's padding point
    assert [s[1] for s in dec["point_coords"]] == [1, 4, 67]
    for shapes in [*dec.values(), enc, profile_shapes("student")["images"]]:
        lo, opt, hi = (np.array(s) for s in shapes)
        assert (lo <= opt).all() and (opt <= hi).all()
    assert shape_input_values("decoder")["orig_im_size"][0] == (1, 1)
    assert keep_fp32("NORMALIZATION") and keep_fp32("SOFTMAX") and keep_fp32("REDUCE")
    assert keep_fp32("UNARY", "SQRT") and not keep_fp32("UNARY", "ABS") and not keep_fp32("CONVOLUTION")
    with pytest.raises(ValueError, match="no TensorRT profile"):
        profile_shapes("bogus")


def test_tensorrt_missing_is_a_clear_error(tiny_export: Path, monkeypatch, capsys) -> None:
    from models.engine import EngineConfig, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when not installed
    assert main(["export", "tensorrt", str(tiny_export)]) == 3
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert main(["export", "tensorrt", str(tiny_export / "nope")]) == 2  # a wrong directory comes first
    assert "not an export directory" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="TensorRT is not installed"):
        build_engine(EngineConfig(backend="tensorrt", export_dir=str(tiny_export)))


@pytest.mark.gpu
@pytest.mark.parametrize("fixture", ["tiny_export", "sam2_export", "light_export"])
def test_tensorrt_engine_matches_onnx(fixture: str, tmp_path: Path, scene, request) -> None:
    import shutil

    pytest.importorskip("tensorrt")
    tiny_export = request.getfixturevalue(fixture)
    from export.tensorrt import build_engines
    from models.engine import Prompt
    from models.engine.sam_onnx import OnnxSamEngine
    from models.engine.sam_tensorrt import TensorRTSamEngine

    work = tmp_path / "export"
    shutil.copytree(tiny_export, work)
    build_engines(work, fp16=False)
    trt_engine, ort_engine = TensorRTSamEngine(work, fp16=False), OnnxSamEngine(work, providers="cpu")
    prompts = [Prompt(points=[[120, 130]], labels=[1]), Prompt(box=[40, 50, 210, 210])]
    a, b = trt_engine.predict(scene, prompts), ort_engine.predict(scene, prompts)
    assert np.abs(a.low_res_logits - b.low_res_logits).max() < 1e-3
    assert (a.masks == b.masks).mean() > 0.999


# -- Triton ---------------------------------------------------------------------------------------
def _parse_config(text: str):
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, pb.ModelConfig())


def test_triton_repository(tiny_export: Path, student_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert main(["export", "triton", str(tiny_export), "--repo", str(repo)]) == 0
    write_repository(student_export, repo)
    assert sorted(p.name for p in repo.iterdir()) == [
        "sam_decoder",
        "sam_decoder_single",
        "sam_encoder",
        "student",
    ]
    for model in repo.iterdir():
        cfg = _parse_config((model / "config.pbtxt").read_text())  # Triton's own schema
        assert cfg.name == model.name and cfg.platform == "onnxruntime_onnx"
        assert (model / "1" / "model.onnx").is_file()
    enc = _parse_config((repo / "sam_encoder" / "config.pbtxt").read_text())
    assert enc.max_batch_size == 8 and enc.HasField("dynamic_batching")
    assert list(enc.input[0].dims) == [3, 1024, 1024]
    dec = _parse_config((repo / "sam_decoder" / "config.pbtxt").read_text())
    assert dec.max_batch_size == 0 and list(dec.output[0].dims) == [-1, 3, -1, -1]
    assert [i.name for i in dec.input][-1] == "orig_im_size"
    with pytest.raises(ValueError, match="no TensorRT engine for encoder"):
        write_repository(tiny_export, tmp_path / "trt", platform="tensorrt_plan")
    assert not (tmp_path / "trt").exists()  # nothing written when a model's file is missing
    partial = tmp_path / "partial"
    shutil.copytree(tiny_export, partial)
    (partial / "decoder_single.onnx").unlink()
    with pytest.raises(
        ValueError, match=r"decoder_single\.onnx: no such decoder_single model \(the export is incomplete\)"
    ):
        write_repository(partial, tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()
    assert sorted(p.name for p in (repo / "sam_encoder" / "1").iterdir()) == ["model.onnx"]  # no temporaries
    with pytest.raises(ValueError, match="platform 'bogus' unknown"):
        model_config("encoder", "x", "bogus")
    assert json.loads((tiny_export / "metadata.json").read_text())["kind"] == "sam"


def test_triton_backend_without_a_server_is_a_clear_error(tiny_export: Path) -> None:
    pytest.importorskip("tritonclient.http")
    from models.engine import EngineConfig, build_engine

    with pytest.raises(ValueError, match="not reachable"):
        build_engine(EngineConfig(backend="triton", export_dir=str(tiny_export), triton_url="127.0.0.1:9"))
    with pytest.raises(ValueError, match="needs triton_url"):
        build_engine(EngineConfig(backend="triton", export_dir=str(tiny_export)))


def test_tensorrt_plans_of_another_precision_get_another_cache_namespace(
    tiny_export: Path, tmp_path, monkeypatch
) -> None:
    """The TensorRT engine keys its cache by the plans it loads (precision, GPU, TensorRT version),
    not only by the ONNX export they were built from. TensorRT itself is faked here (no GPU): the
    plan files exist, the runtime records which it was given."""
    import shutil
    from types import SimpleNamespace

    import models.engine.sam_tensorrt as sam_tensorrt
    from models.engine.sam_onnx import OnnxSamEngine
    from models.runtime.onnx_runtime import load_export_metadata
    from models.runtime.tensorrt_runtime import engine_filename

    work = tmp_path / "export"
    shutil.copytree(tiny_export, work)
    monkeypatch.setattr(sam_tensorrt, "require_tensorrt", lambda: SimpleNamespace(__version__="10.0"))
    monkeypatch.setattr(sam_tensorrt, "TensorRTModel", lambda path: SimpleNamespace(path=path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    roles = load_export_metadata(work).roles
    for role in roles:
        (work / engine_filename(role, "Fake GPU", "10.0", False)).touch()
    with pytest.raises(ValueError, match="no TensorRT engine"):  # no plan yet for fp16
        sam_tensorrt.TensorRTSamEngine(work, fp16=True)
    fp32 = sam_tensorrt.TensorRTSamEngine(work)
    for role in roles:
        (work / engine_filename(role, "Fake GPU", "10.0", True)).touch()
    fp16 = sam_tensorrt.TensorRTSamEngine(work)  # fp16 is preferred once built
    assert fp16.models["encoder"].path.name.endswith(".fp16.plan")
    onnx = OnnxSamEngine(work).namespace
    assert fp32.namespace.startswith(onnx.replace("onnx", "tensorrt", 1))
    assert (
        len({fp32.namespace, fp16.namespace, sam_tensorrt.TensorRTSamEngine(work, fp16=False).namespace}) == 2
    )


def test_cached_exported_embeddings_own_their_memory(tiny_export: Path, scene) -> None:
    """Images encoded in one batch are cached one by one: each payload holds its own copy, never a
    view that keeps the whole batch's encoder output alive while the budget counts one image."""
    from models.engine.sam_onnx import OnnxSamEngine

    engine = OnnxSamEngine(tiny_export, providers="cpu", encoder_batch=4)
    handles = engine.embed([scene, scene[::-1].copy(), scene[:, ::-1].copy()])
    assert engine.stats.encoder_calls == 1
    for h in handles:
        assert h.payload.embedding.base is None  # owns its data
        assert engine.payload_nbytes(h.payload) == h.payload.embedding.nbytes


def test_int8_is_refused_for_an_encoder_with_nothing_to_quantize(light_export: Path, tmp_path: Path) -> None:
    """EfficientViT-SAM's encoder is convolutions: dynamic int8 (MatMul, Gemm with constant weights)
    would write an unchanged copy, so quantize refuses it and registers nothing."""
    import shutil

    from export.quantize import quantize_encoder

    work = tmp_path / "export"
    shutil.copytree(light_export, work)
    with pytest.raises(ValueError, match="no MatMul or Gemm with constant weights"):
        quantize_encoder(work)
    assert "encoder_int8" not in read_metadata(work)["files"]
    assert not any("int8" in p.name for p in work.iterdir())


def test_an_interrupted_re_export_leaves_no_export_that_loads(
    tiny_export: Path, tmp_path: Path, monkeypatch
) -> None:
    """Re-exporting into a finished export and stopping after the first graph: the old metadata.json
    went first, so the mix of new and old graphs is not taken for an export."""
    import shutil

    import export.onnx_export as onnx_export
    from models.runtime.onnx_runtime import load_export_metadata

    work = tmp_path / "export"
    shutil.copytree(tiny_export, work)
    real, written = onnx_export._onnx_export, []

    def stop_after_one(*args, **kwargs) -> None:
        if written:
            raise KeyboardInterrupt
        real(*args, **kwargs)
        written.append(args[2])

    monkeypatch.setattr(onnx_export, "_onnx_export", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_sam_checkpoint("tiny", None, work, random_seed=1)
    assert [p.name for p in written] == ["encoder.onnx"]
    with pytest.raises(ValueError, match="not an export directory"):
        load_export_metadata(work)


def test_a_graph_changed_since_the_export_is_refused_at_load(tiny_export: Path, tmp_path: Path) -> None:
    import shutil

    from models.engine.sam_onnx import OnnxSamEngine

    work = tmp_path / "export"
    shutil.copytree(tiny_export, work)
    with (work / "decoder.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"decoder.onnx \(decoder\) is \d+ bytes, metadata.json says \d+"):
        OnnxSamEngine(work)


def test_verify_fails_a_case_whose_scores_differ() -> None:
    """IoU scores (and instance scores) count in the verdict, not only logits and masks."""
    from export.verify import Case, Checks

    case = Case("sam tiny", "x", (4, 4), 1, True, 0.0, 0.0, 1.0, 1e-6)
    assert Checks().judged(case).passed
    assert not Checks().judged(replace(case, iou_diff=0.5)).passed
    assert not Checks().judged(replace(case, max_abs_diff=0.5)).passed
