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
from typing import TYPE_CHECKING, Any

import numpy as np

from models.engine.exported import DECODER_ROLES, EngineOptions, ExportedSamEngine
from models.runtime.onnx_runtime import ExportMetadata, create_session

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; the project supports 3.10
    from typing_extensions import Unpack

MANY_DECODER_ROLES = {True: "decoder_many", False: "decoder_many_single"}  # multimask -> graph


class OnnxSamEngine(ExportedSamEngine):
    """PromptableSegmenter backed by ONNX Runtime sessions of the exported encoder and decoders."""

    def __init__(
        self,
        export_dir: str | Path | ExportMetadata,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        encoder_file: str = "encoder",
        **options: Unpack[EngineOptions],
    ) -> None:
        name = "onnx" if encoder_file == "encoder" else f"onnx-{encoder_file}"
        super().__init__(export_dir, name, encoder_file=encoder_file, **options)
        md = self.metadata

        def session(role: str) -> Any:
            return create_session(md.file(role), providers, threads)

        self.encoder = session(encoder_file)
        self.decoders = {multimask: session(role) for multimask, role in DECODER_ROLES.items()}
        # the many-prompt formulation (exports since issue 16): used when no prompt has a mask input
        self.many_decoders = {}
        if "decoder_many" in md["files"]:
            self.many_decoders = {multimask: session(role) for multimask, role in MANY_DECODER_ROLES.items()}
        self.providers = self.encoder.get_providers()

    def _run_encoder(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.encoder.run(None, {"images": images})
        return {o.name: v for o, v in zip(self.encoder.get_outputs(), outputs, strict=True)}

    def _run_decoder(self, inputs: dict[str, np.ndarray], multimask: bool) -> dict[str, np.ndarray]:
        session = self.decoders[multimask]
        if self.many_decoders and not inputs["has_mask_input"].any():
            session = self.many_decoders[multimask]
            inputs = {i.name: inputs[i.name] for i in session.get_inputs()}
        outputs = session.run(None, inputs)
        return {o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)}

    def info(self) -> dict:
        return super().info() | {"providers": self.providers}
