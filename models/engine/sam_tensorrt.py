"""The TensorRT SAM backend: engines built by `sesam export tensorrt DIR` for this GPU and version.

Same host side as the ONNX backend (`models.engine.exported`); needs TensorRT and CUDA, and says
so clearly without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.engine.base import DEFAULT_WORKING_SIDE
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.exported import ExportedSamEngine
from models.runtime.tensorrt_runtime import TensorRTModel, find_engine, require_tensorrt


class TensorRTSamEngine(ExportedSamEngine):
    def __init__(
        self,
        export_dir: str | Path,
        fp16: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        encoder_batch: int = 4,
        decode_batch: int = 64,
        max_prompts: int | None = None,
        working_side: int | None = DEFAULT_WORKING_SIDE,
    ) -> None:
        trt = require_tensorrt()
        import torch

        super().__init__(
            export_dir,
            "tensorrt",
            cache_bytes,
            encoder_batch,
            decode_batch,
            max_prompts,
            working_side=working_side,
        )
        gpu = torch.cuda.get_device_name(0)
        self.models = {
            role: TensorRTModel(find_engine(export_dir, role, gpu, trt.__version__, fp16))
            for role in ("encoder", "decoder", "decoder_single")
        }

    def _run_encoder(self, images: np.ndarray) -> np.ndarray:
        return self.models["encoder"].run({"images": images})["image_embeddings"]

    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        return self.models["decoder" if multimask else "decoder_single"].run(inputs)
