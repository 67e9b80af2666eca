"""The Triton SAM backend: the exported encoder and decoders served by Triton Inference Server
(a repository from `sesam export triton`), called over HTTP with tritonclient.

The host side (resize, normalise, prompt packing, cache) is the ONNX backend's; the export
directory supplies the metadata. Install with `pip install 'sesam[triton]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.engine.exported import DECODER_ROLES, EngineOptions, ExportedSamEngine
from models.runtime.deps import require
from models.runtime.onnx_runtime import ExportMetadata

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the project supports 3.10
    from typing_extensions import Unpack


class TritonSamEngine(ExportedSamEngine):
    def __init__(
        self,
        export_dir: str | Path | ExportMetadata,
        url: str = "localhost:8000",
        prefix: str = "sam_",
        timeout_s: float = 60.0,
        **options: Unpack[EngineOptions],
    ) -> None:
        httpclient = require("tritonclient.http", "triton", "backend triton")
        super().__init__(export_dir, "triton", **options)
        self._http = httpclient
        self.url = url.removeprefix("http://")
        self.prefix = prefix
        self.client = httpclient.InferenceServerClient(
            self.url, connection_timeout=timeout_s, network_timeout=timeout_s
        )
        for role in self.metadata.roles:
            name = prefix + role
            try:
                ready = self.client.is_model_ready(name)
            except Exception as exc:
                raise ValueError(f"triton server at {self.url} is not reachable ({exc})") from exc
            if not ready:
                raise ValueError(f"triton server at {self.url}: model {name!r} is not loaded/ready")

    def _infer(self, model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        http = self._http
        inputs = []
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            item = http.InferInput(name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
            item.set_data_from_numpy(value, binary_data=True)
            inputs.append(item)
        requested = [http.InferRequestedOutput(n, binary_data=True) for n in outputs]
        result = self.client.infer(model, inputs, outputs=requested)
        return {n: result.as_numpy(n) for n in outputs}

    def _run_encoder(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._infer(self.prefix + "encoder", {"images": images}, list(self.encoder_outputs))

    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        model = self.prefix + DECODER_ROLES[multimask]
        return self._infer(model, inputs, ["masks", "iou_predictions", "low_res_masks"])

    def info(self) -> dict:
        return super().info() | {"triton_url": self.url}
