from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_every_sam_type_reaches_its_backend_from_the_command_line(tmp_path, capsys) -> None:
    """`--sam-type` takes every type an engine builds (SAM 1, SAM 2.1, the light SAM), `auto` with a
    checkpoint picks the type's backend, and a type given to another SAM backend is one clear error
    naming the backend it is for, before any model is built; the backend help names every backend."""
    import dataclasses
    import re

    from models.engine import ENGINE_BACKENDS, EngineConfig
    from models.engine.factory import sam_types
    from sesam.cli import build_parser

    types = sam_types()
    expected = {"vit_b": "torch", "tiny": "torch", "sam2.1_hiera_t": "sam2", "sam2.1_hiera_b+": "sam2"}
    assert {k: types[k] for k in expected} == expected and types["efficientvit-sam-l0"] == "light"
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"not read: the config is only validated")
    parser = build_parser()
    commands = (["predict", "--image", "x.png"], ["refine", "--images", "i", "--weak", "w", "--out", "o"])
    for sam_type, backend in types.items():
        for command in commands:
            assert parser.parse_args([*command, "--sam-type", sam_type]).sam_type == sam_type
        config = EngineConfig(sam_type=sam_type, sam_checkpoint=str(checkpoint))
        assert config.resolved_backend() == backend
        config.validate()
        for other in {"torch", "sam2", "light"} - {backend}:
            with pytest.raises(
                ValueError,
                match=re.escape(f"sam_type '{sam_type}' is for backend {backend}; backend {other} takes"),
            ):
                EngineConfig(backend=other, sam_type=sam_type).validate()
    with pytest.raises(ValueError, match="sam_type 'vit_x' is unknown; backend torch takes tiny, vit_b"):
        EngineConfig(backend="torch", sam_type="vit_x").validate()
    help_text = next(f for f in dataclasses.fields(EngineConfig) if f.name == "backend").metadata["help"]
    assert all(name in help_text for name in ENGINE_BACKENDS)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["segment", "--images", "i", "--out", "o", "--threads", "-1"], "--threads"),
        (["segment", "--images", "i", "--out", "o", "--threads", "100000"], "--threads"),
        (["segment", "--images", "i", "--out", "o", "--limit", "0"], "--limit"),
        (["cam", "--images", "i", "--out", "o", "--background-class", "300"], "--background-class"),
        (["cam", "--images", "i", "--out", "o", "--threshold", "1.5"], "--threshold"),
        (
            ["weak", "derive", "--dataset", "camvid", "--kind", "points", "--out", "o", "--limit", "-1"],
            "--limit",
        ),
        (["export", "verify", "d", "--atol", "nan"], "--atol"),
        (["export", "verify", "d", "--min-agreement", "5"], "--min-agreement"),
        (["export", "quantize", "d", "--calibration-count", "-1"], "--calibration-count"),
        (["export", "triton", "d", "--repo", "r", "--instances", "0"], "--instances"),
        (
            ["refine", "--images", "i", "--weak", "d", "--out", "o", "--pred-iou-thresh", "7"],
            "--pred-iou-thresh",
        ),
        (["eval-labels", "--gt", "d", "--pred", "o", "--num-classes", "0"], "--num-classes"),
        (["segment", "--images", "i", "--out", "o", "--endpoint", "http://x", "--timeout", "0"], "--timeout"),
    ],
)
def test_a_number_flag_out_of_range_is_one_usage_error(argv: list[str], flag: str, tmp_path, capsys) -> None:
    """Out-of-range numbers are refused by the parser, naming the flag (exit 2), before any work:
    they used to wrap (a background class of 300 written as 44), mean "all" or "none" by command
    (--limit 0), or end in an unexpected RuntimeError or MemoryError (--threads)."""
    with pytest.raises(SystemExit) as exited:
        main([a if a not in ("i", "o", "d", "r") else str(tmp_path / a) for a in argv])
    assert exited.value.code == 2
    assert f"argument {flag}: must" in capsys.readouterr().err


def test_segment_refuses_providers_for_a_pt_student_before_ray_starts(tmp_path, capsys, monkeypatch) -> None:
    """--providers with a .pt student (the default) is one line, exit 2, checked before any worker
    starts: on Ray it was first raised inside an actor, as a Ray traceback."""
    import models.jobs.segment

    def no_run(*args, **kwargs):
        raise AssertionError("segment_folder ran")

    monkeypatch.setattr(models.jobs.segment, "segment_folder", no_run)
    (tmp_path / "i").mkdir()
    argv = ["segment", "--images", str(tmp_path / "i"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--providers", "CPUExecutionProvider", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "providers are read by the onnx runtime" in err


def test_segment_refuses_a_device_that_is_not_there_before_loading(tmp_path, capsys) -> None:
    (tmp_path / "i").mkdir()
    assert (
        main(
            ["segment", "--images", str(tmp_path / "i"), "--out", str(tmp_path / "o"), "--device", "cuda:99"]
        )
        == 2
    )
    assert "device 'cuda:99'" in capsys.readouterr().err


def test_an_output_path_in_the_way_is_one_line_naming_it(tmp_path, scene, capsys) -> None:
    """A file where an output folder is meant, and a folder where an output file is meant, are one
    line naming the path given (not "[Errno 17] ..." or the name of a temporary file), exit 2."""
    from models.io import atomic_write_text

    image, blocker = tmp_path / "scene.png", tmp_path / "taken.txt"
    Image.fromarray(scene).save(image)
    blocker.write_text("not a folder")
    assert main(["predict", "--image", str(image), "--point", "10,10", "--out", str(blocker)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"sesam predict: error: {blocker}: already exists and is not a folder"
    )
    with pytest.raises(IsADirectoryError, match="a folder, not a file to write"):
        atomic_write_text(tmp_path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.png", "taken.txt"]  # no temporaries


def test_flags_mend_what_the_environment_alone_would_not_pass(monkeypatch) -> None:
    """SESAM_* and the flags are validated together: SESAM_BACKEND=sam2 with --sam-type
    sam2.1_hiera_t, or overridden by --backend torch --sam-type tiny, is a valid engine (the
    environment alone, sam2 with the default vit_b, is not)."""
    from models.jobs.cli import engine_config_from_args
    from sesam.cli import build_parser

    monkeypatch.setenv("SESAM_BACKEND", "sam2")
    predict = ["predict", "--image", "x.png"]
    config = engine_config_from_args(
        build_parser().parse_args([*predict, "--backend", "torch", "--sam-type", "tiny"])
    )
    assert (config.backend, config.sam_type) == ("torch", "tiny")
    config = engine_config_from_args(build_parser().parse_args([*predict, "--sam-type", "sam2.1_hiera_t"]))
    assert (config.backend, config.sam_type) == ("sam2", "sam2.1_hiera_t")
    with pytest.raises(
        ValueError, match=r"environment \+ command line: sam_type 'vit_b' is for backend torch"
    ):
        engine_config_from_args(build_parser().parse_args(predict))


def test_sam_flags_given_to_the_classical_prior_are_refused(monkeypatch, tmp_path, capsys) -> None:
    """`--sam-type` without a checkpoint (auto resolves to the classical prior) and `--sam-checkpoint`
    with `--backend classical` exit 2 with one line naming the flag (before: both ran the classical
    prior without a word)."""
    from sesam.cli import main

    for name in ("SESAM_BACKEND", "SESAM_SAM_TYPE", "SESAM_SAM_CHECKPOINT", "SESAM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    image = tmp_path / "x.png"
    image.write_bytes(b"")  # never read: the engine config is refused first
    predict = ["predict", "--image", str(image), "--point", "5,5", "--out", str(tmp_path / "o")]
    assert main([*predict, "--sam-type", "vit_b"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--sam-type: backend classical reads no SAM type" in err
    assert main([*predict, "--backend", "classical", "--sam-checkpoint", __file__]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "backend classical reads no sam_checkpoint" in err
    assert not (tmp_path / "o").exists()


def test_os_errors_read_as_one_line_naming_their_paths(tmp_path) -> None:
    """An OSError reads '<path>[ -> <path2>]: <reason>', bytes paths included; only a lone path
    that exists and is no folder reads 'already exists and is not a folder'."""
    import errno
    import os

    from sesam.cli import _one_line

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert _one_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "f"))) == (
        f"{tmp_path / 'f'}: already exists and is not a folder"
    )
    assert (
        _one_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "d")))
        == f"{tmp_path / 'd'}: File exists"
    )
    link = FileExistsError(errno.EEXIST, "File exists", "a", None, str(tmp_path / "f"))
    assert _one_line(link) == f"a -> {tmp_path / 'f'}: File exists"
    assert _one_line(PermissionError(errno.EACCES, "Permission  denied", os.fsencode("/x y"))) == (
        "/x y: Permission denied"
    )
    assert _one_line(OSError("no errno here")) == "no errno here"


def test_importing_the_serve_command_does_not_load_torch() -> None:
    """`serving.cli` (imported by tests and tools for `serve_command`) stays light."""
    import subprocess
    import sys

    code = "import sys, serving.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
