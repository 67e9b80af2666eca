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
