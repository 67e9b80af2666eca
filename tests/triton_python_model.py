"""Triton python-backend model that runs a repository's model.onnx with onnxruntime.

Only for the live Triton test: the tritonserver that installs from PyPI (inside nvidia-pytriton)
ships the python backend alone, not the onnxruntime one. This file stands in for Triton's
onnxruntime backend so that a real server, with the config.pbtxt `sesam export triton` wrote
(names, dims, max_batch_size, dynamic batching), answers the tritonclient engine backend.
Requests that the dynamic batcher groups are run as one batch when their shapes allow.

Tensors cross the stub by DLPack: the stub's numpy bridge is built against numpy 1 and misreads
numpy 2 arrays (empty outputs). The stub then logs "PyCapsule_GetPointer called with incorrect
name" once per response when it frees numpy's capsule; the data is already copied and correct.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = [item["name"] for item in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _feeds(self, request) -> dict[str, np.ndarray]:
        return {
            name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name)) for name in self.inputs
        }

    def execute(self, requests: list) -> list:
        feeds = [self._feeds(r) for r in requests]
        same_shapes = all(f[n].shape[1:] == feeds[0][n].shape[1:] for f in feeds for n in self.inputs)
        if self.batched and len(feeds) > 1 and same_shapes:
            sizes = [f[self.inputs[0]].shape[0] for f in feeds]
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
            results = self.session.run(self.outputs, joined)
            bounds = np.cumsum([0, *sizes])
            per_request = [[r[a:b] for r in results] for a, b in itertools.pairwise(bounds)]
        else:
            per_request = [self.session.run(self.outputs, f) for f in feeds]
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, out)]
            )
            for out in per_request
        ]
