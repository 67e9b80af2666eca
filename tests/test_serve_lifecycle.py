"""Start-up failures and `sesam serve` shutdown, over real processes (the shipped instance
student served from PyTorch and ONNX is in tests/test_segment_service.py).

- A broken student makes `bentoml serve` exit non-zero within seconds with one clear line, instead
  of a supervisor respawning the worker forever.
- `sesam serve` forwards SIGTERM and leaves no process behind.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import psutil
from PIL import Image

from serving.cli import serve_command
from tests.conftest import REPO, free_port


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true", SESAM_BACKEND="classical", SESAM_BATCHING="0")
    for name in ("SESAM_API_KEY", "SESAM_CONFIG", "SESAM_SAM_CHECKPOINT", "SESAM_STUDENT_CHECKPOINT"):
        env.pop(name, None)
    return env | extra


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _start_failure(env: dict[str, str], timeout_s: float = 120) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        serve_command("127.0.0.1", free_port()),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def test_missing_student_path_exits_with_one_line(tmp_path) -> None:
    code, output, _ = _start_failure(_env(SESAM_STUDENT_CHECKPOINT=str(tmp_path / "nope.pt")))
    assert code == 2, output[-2000:]
    lines = [line for line in output.splitlines() if line.startswith("sesam: start-up failed:")]
    assert len(lines) == 1 and "student_checkpoint" in lines[0], output[-2000:]
    assert "Traceback" not in output


def test_sesam_serve_refuses_a_sam_type_its_engine_would_ignore(monkeypatch, capsys) -> None:
    """`sesam serve --sam-type vit_b` without a checkpoint (auto resolves to the classical prior)
    is one line, exit 2, and no server is started (before: the prior served, the flag ignored)."""
    import serving.cli
    from sesam.cli import main

    for name in ("SESAM_BACKEND", "SESAM_CONFIG", "SESAM_SAM_CHECKPOINT", "SESAM_SAM_TYPE"):
        monkeypatch.delenv(name, raising=False)
    started: list[list[str]] = []
    monkeypatch.setattr(serving.cli, "supervise", lambda command, env: started.append(command) or 0)
    assert main(["serve", "--sam-type", "vit_b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--sam-type: backend classical reads no SAM type" in err
    assert started == []
    assert main(["serve", "--backend", "torch", "--sam-type", "tiny"]) == 0 and len(started) == 1


def test_broken_student_checkpoint_ends_the_server(tmp_path) -> None:
    """The file exists but is no checkpoint: the worker fails to load it and the server stops (exit 3).
    The server is started with a fatal file inherited from a parent that imported the service too (a
    notebook, a test run): the server watches its own, and the parent's is left alone."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    parents = tmp_path / "parent-fatal"
    env = _env(SESAM_STUDENT_CHECKPOINT=str(broken), SESAM_FATAL_FILE=str(parents))
    code, output, seconds = _start_failure(env)
    assert code == 3, output[-2000:]
    lines = [line for line in output.splitlines() if line.startswith("sesam: start-up failed:")]
    assert len(lines) == 1 and "cannot read the student checkpoint" in lines[0], output[-2000:]
    assert seconds < 60
    assert not parents.exists()


def test_the_supervisor_watches_its_own_fatal_file_once(monkeypatch) -> None:
    """An inherited fatal file (even one named like this process's own, after a pid is reused) is
    replaced by this process's own; a second call registers nothing."""
    from serving import startup

    hooks: list = []
    monkeypatch.setattr(startup.atexit, "register", hooks.append)
    monkeypatch.setattr(startup, "_watching", None)  # as in a process that has not imported the service
    monkeypatch.setenv(startup.FATAL_ENV, "/nonexistent/sesam-fatal-1")
    startup.watch_for_fatal_workers()
    own = os.environ[startup.FATAL_ENV]
    assert own.endswith(f"sesam-fatal-{os.getpid()}") and len(hooks) == 1
    startup.watch_for_fatal_workers()
    assert os.environ[startup.FATAL_ENV] == own and len(hooks) == 1
    monkeypatch.setattr(startup, "_watching", None)  # a new process that inherited its own name
    startup.watch_for_fatal_workers()
    assert os.environ[startup.FATAL_ENV] == own and len(hooks) == 2


def test_sesam_serve_forwards_sigterm_and_leaves_no_process(tmp_path) -> None:
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sesam.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=_env(SESAM_STUDENT_CHECKPOINT="none"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready in 240 s"
            time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 3  # bentoml's supervisor, the front and the heavy lane
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, 128 + signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, [p.pid for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
