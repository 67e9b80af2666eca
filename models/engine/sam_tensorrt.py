"""The TensorRT SAM backend: engines built by `sesam export tensorrt DIR` for this GPU and version.

Same host side as the ONNX backend (`models.engine.exported`); needs TensorRT and CUDA, and says
so clearly without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.engine.exported import DECODER_ROLES, EngineOptions, ExportedSamEngine
from models.runtime.onnx_runtime import ExportMetadata
from models.runtime.tensorrt_runtime import TensorRTModel, find_engine, require_tensorrt

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the project supports 3.10
    from typing_extensions import Unpack


class TensorRTSamEngine(ExportedSamEngine):
    def __init__(
        self,
        export_dir: str | Path | ExportMetadata,
        fp16: bool | None = None,
        **options: Unpack[EngineOptions],
    ) -> None:
        trt = require_tensorrt()
        import torch

        super().__init__(export_dir, "tensorrt", **({"decode_batch": 64} | options))
        gpu = torch.cuda.get_device_name(0)
        self.models = {
            role: TensorRTModel(find_engine(self.export_dir, role, gpu, trt.__version__, fp16))
            for role in self.metadata.roles
        }
        # the plan, not only the ONNX it was built from, names the model: an fp16 plan's embeddings
        # (and labels made from them) are not an fp32 plan's, nor another GPU's or TensorRT's
        self._namespace = f"{self._namespace}:{self.models['encoder'].path.name.removeprefix('encoder.')}"

    def _run_encoder(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.models["encoder"].run({"images": images})

    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        return self.models[DECODER_ROLES[multimask]].run(inputs)
