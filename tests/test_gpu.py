"""CUDA checks; skipped on machines without a GPU (see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from models.engine import Prompt
from models.engine.modeling import build_sam
from models.engine.sam_torch import SamEngine


@pytest.mark.gpu
def test_cuda_engine_matches_cpu(scene) -> None:
    prompts = [Prompt(points=[[120, 130]], labels=[1]), Prompt(box=[40, 50, 210, 210])]
    cpu = SamEngine(build_sam("tiny"), device="cpu").predict(scene, prompts)
    gpu = SamEngine(build_sam("tiny"), device="cuda").predict(scene, prompts)
    np.testing.assert_allclose(gpu.low_res_logits, cpu.low_res_logits, atol=1e-3)
    np.testing.assert_allclose(gpu.iou, cpu.iou, atol=1e-4)
    assert (gpu.masks != cpu.masks).mean() < 1e-3


@pytest.mark.gpu
def test_cuda_sam2_batches_match_cpu_one_by_one(scene) -> None:
    """SAM 2.1 on CUDA decodes 64 prompts per call; the answers equal the CPU's one-by-one ones."""
    from models.engine.modeling.sam2_build import build_sam2_model
    from models.engine.sam2_torch import Sam2Engine

    prompts = [Prompt(points=[[120 + 10 * i, 130]], labels=[1]) for i in range(8)] + [
        Prompt(box=[40, 50, 210, 210])
    ]
    cpu = Sam2Engine(build_sam2_model("sam2.1_hiera_t", None), device="cpu")
    gpu = Sam2Engine(build_sam2_model("sam2.1_hiera_t", None), device="cuda")
    assert (cpu.decode_batch, gpu.decode_batch) == (1, 64)
    a, b = cpu.predict(scene, prompts), gpu.predict(scene, prompts)
    np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-2)
    np.testing.assert_allclose(b.iou, a.iou, atol=1e-3)
    assert (a.masks != b.masks).mean() < 1e-3
