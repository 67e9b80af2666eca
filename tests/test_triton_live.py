"""A real Triton Inference Server answering the repository `sesam export triton` writes.

The tritonserver here is the one inside the nvidia-pytriton wheel from PyPI (`make install` puts it
under .triton/, apart from the project's venv, since pytriton itself pins numpy < 2). It ships only
Triton's python backend, so each model runs its model.onnx through onnxruntime in a python-backend
shim (tests/triton_python_model.py) instead of Triton's onnxruntime backend; everything else is the
real server: our config.pbtxt files (names, dims, batching), the HTTP protocol, the dynamic batcher,
and the tritonclient engine backend. Skipped where no tritonserver is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

from export.triton import write_repository
from models.engine import EngineConfig, build_engine
from models.engine.sam_onnx import OnnxSamEngine
from models.engine.types import Prompt
from models.students.onnx_student import OnnxStudent
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
TRITON_HOME = Path(os.environ.get("SESAM_TRITON_HOME", ROOT / ".triton"))
SHIM = Path(__file__).with_name("triton_python_model.py")

pytest.importorskip("tritonclient.http")


def _python_backend_repository(repo: Path) -> None:
    """Swap each model's platform for the python-backend shim; configs stay as written otherwise."""
    for model in repo.iterdir():
        config = model / "config.pbtxt"
        text = config.read_text()
        assert 'platform: "onnxruntime_onnx"' in text
        config.write_text(text.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
        shutil.copy(SHIM, model / "1" / "model.py")


@pytest.fixture(scope="module")
def triton_url(tiny_export: Path, student_export: Path, tmp_path_factory) -> str:
    server = TRITON_HOME / "pytriton" / "tritonserver"
    binary = server / "bin" / "tritonserver"
    if not binary.is_file():
        pytest.skip(f"no tritonserver at {binary} (`make install` installs PyPI's nvidia-pytriton there)")
    stub = server / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():  # pytriton ships one stub per Python version; the backend wants one beside it
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy(server / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    repo = tmp_path_factory.mktemp("triton_repo")
    write_repository(tiny_export, repo)
    write_repository(student_export, repo)
    _python_backend_repository(repo)

    http_port = free_port()
    log_path = repo.parent / "tritonserver.log"
    env = os.environ | {
        "LD_LIBRARY_PATH": str(TRITON_HOME / "nvidia_pytriton.libs"),
        # the python-backend stub finds its interpreter (and so this venv's packages) on PATH
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([sysconfig.get_paths()["purelib"], str(ROOT)]),
        "OMP_NUM_THREADS": "1",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--model-repository={repo}",
                f"--backend-directory={server / 'backends'}",
                f"--http-port={http_port}",
                f"--grpc-port={free_port()}",
                "--allow-metrics=false",
                "--exit-timeout-secs=5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    import tritonclient.http as httpclient

    url = f"127.0.0.1:{http_port}"
    client = httpclient.InferenceServerClient(url)
    deadline = time.monotonic() + 180
    while True:
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tritonserver did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_triton_sam_backend_matches_onnx_runtime(triton_url: str, tiny_export: Path, scene) -> None:
    triton = build_engine(EngineConfig(backend="triton", export_dir=str(tiny_export), triton_url=triton_url))
    local = OnnxSamEngine(tiny_export)
    h, w = scene.shape[:2]
    prompts = [
        Prompt(points=np.array([[w * 0.3, h * 0.4]]), labels=np.array([1])),
        Prompt(box=np.array([w * 0.1, h * 0.2, w * 0.6, h * 0.7])),
        Prompt(points=np.array([[w * 0.5, h * 0.5], [w * 0.8, h * 0.2]]), labels=np.array([1, 0])),
    ]
    # two images in one encoder call: the encoder's batch axis goes through Triton too
    flipped = np.ascontiguousarray(scene[:, ::-1])
    remote_handles = triton.embed([scene, flipped])
    local_handles = local.embed([scene, flipped])
    for remote_handle, local_handle in zip(remote_handles, local_handles):
        for multimask in (True, False):
            remote = triton.predict(remote_handle, prompts, multimask=multimask)
            expected = local.predict(local_handle, prompts, multimask=multimask)
            assert remote.masks.shape == expected.masks.shape == (3, 3 if multimask else 1, h, w)
            assert np.mean(remote.masks == expected.masks) >= 0.9999
            np.testing.assert_allclose(remote.iou, expected.iou, atol=1e-5)
            np.testing.assert_allclose(remote.low_res_logits, expected.low_res_logits, atol=1e-4)
    assert triton.info()["triton_url"] == triton_url


def test_triton_student_and_batching(triton_url: str, student_export: Path, camvid_image) -> None:
    """The student through the server, several concurrent requests the dynamic batcher may join."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as httpclient

    local = OnnxStudent(student_export)
    image = camvid_image[:224, :320]  # the graph takes multiples of 32
    batch = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    expected = local.logits(batch)

    def call(_: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(triton_url)
        item = httpclient.InferInput("images", list(batch.shape), "FP32")
        item.set_data_from_numpy(batch)
        return client.infer("student", [item]).as_numpy("logits")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(8)))
    for logits in results:
        np.testing.assert_allclose(logits, expected, atol=1e-4)
