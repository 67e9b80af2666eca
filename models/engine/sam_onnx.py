"""The ONNX Runtime SAM backend: runs an export directory written by `sesam export sam`.

Same interface and host-side behaviour as the torch backend (see `models.engine.exported`);
providers are chosen automatically (TensorRT EP, CUDA EP, CPU) or named; threads configurable.
`encoder_file` picks another encoder of the same export, e.g. the int8 one (`encoder_int8`).
Calls whose prompts carry no mask input run the many-prompt decoder (`decoder_many*.onnx`, the
`ManyPromptDecoder` formulation) when the export has it; the others the plain decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.engine.base import DEFAULT_WORKING_SIDE
from models.engine.cache import DEFAULT_CACHE_BYTES
from models.engine.exported import ExportedSamEngine
from models.runtime.onnx_runtime import create_session, model_file


class OnnxSamEngine(ExportedSamEngine):
    """PromptableSegmenter backed by ONNX Runtime sessions of the exported encoder and decoders."""

    def __init__(
        self,
        export_dir: str | Path,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        encoder_file: str = "encoder",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        encoder_batch: int = 4,
        decode_batch: int = 16,
        max_prompts: int | None = None,
        working_side: int | None = DEFAULT_WORKING_SIDE,
    ) -> None:
        super().__init__(
            export_dir,
            name="onnx" if encoder_file == "encoder" else f"onnx-{encoder_file}",
            cache_bytes=cache_bytes,
            encoder_batch=encoder_batch,
            decode_batch=decode_batch,
            max_prompts=max_prompts,
            encoder_file=encoder_file,
            working_side=working_side,
        )
        md = self.metadata
        self.encoder = create_session(model_file(export_dir, md, encoder_file), providers, threads)
        self.decoders = {
            True: create_session(model_file(export_dir, md, "decoder"), providers, threads),
            False: create_session(model_file(export_dir, md, "decoder_single"), providers, threads),
        }
        # the many-prompt formulation (exports since issue 16): used when no prompt has a mask input
        self.many_decoders = {}
        if "decoder_many" in md["files"]:
            self.many_decoders = {
                True: create_session(model_file(export_dir, md, "decoder_many"), providers, threads),
                False: create_session(model_file(export_dir, md, "decoder_many_single"), providers, threads),
            }
        self.providers = self.encoder.get_providers()

    def _run_encoder(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"images": images})[0]

    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        session = self.decoders[multimask]
        if self.many_decoders and not inputs["has_mask_input"].any():
            session = self.many_decoders[multimask]
            inputs = {i.name: inputs[i.name] for i in session.get_inputs()}
        outputs = session.run(None, inputs)
        return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}

    def info(self) -> dict:
        return super().info() | {"providers": self.providers}
