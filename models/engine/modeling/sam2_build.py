"""Build SAM 2.1 image models by official type (Meta's `sam2` package) and load checkpoints defensively.

The architecture is `sam2`'s own (its Hydra configs `configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`),
so a model built here loads the official checkpoints (`sam2.1_hiera_tiny.pt`, ...: `{"model":
state_dict}`). Without a checkpoint the weights are random, seeded (tests and speed benchmarks).

Install: `SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0` after torch (the CUDA
extension only fills small holes in video masks; without build isolation pip does not fetch a
second torch to build it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.config import lookup
from models.engine.modeling.build import CheckpointError

# type -> the sam2 package's config; the official checkpoint file of each type
SAM2_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
SAM2_CHECKPOINTS = {
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
}


def is_sam2_type(sam_type: str) -> bool:
    return sam_type in SAM2_CONFIGS


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sam2_state(path: str | Path, sha256: str | None = None) -> Mapping[str, torch.Tensor]:
    """The state dict of an official SAM 2.1 checkpoint (`{"model": ...}`), checked: the file exists,
    matches `sha256` when one is given, and is a torch file holding a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAM 2.1 checkpoint {path} is not a file")
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256.lower():
            raise CheckpointError(f"SAM 2.1 checkpoint {path}: sha256 {got} is not the expected {sha256}")
    try:
        data: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(f"SAM 2.1 checkpoint {path} is not a readable torch file ({exc})") from None
    state = data.get("model") if isinstance(data, dict) else None
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"SAM 2.1 checkpoint {path} holds no 'model' state dict (an official file has one)"
        )
    return state


def build_sam2_model(
    sam_type: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    random_seed: int = 0,
) -> torch.nn.Module:
    """SAM 2.1 `sam_type` (`SAM2_CONFIGS`) in eval mode on the CPU: official weights from
    `checkpoint`, else random weights seeded with `random_seed`."""
    config = lookup(SAM2_CONFIGS, sam_type, "SAM 2.1 type")
    try:
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        from models.runtime.deps import MissingDependency

        raise MissingDependency(
            "SAM 2.1 needs sam2, which is not installed: SAM2_BUILD_CUDA=0 pip install --no-build-isolation "
            "sam2==1.1.0 (after torch)"
        ) from exc

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random_seed)
        model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    if checkpoint is not None:
        state = read_sam2_state(checkpoint, sha256)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            guess = next((t for t, f in SAM2_CHECKPOINTS.items() if Path(checkpoint).name == f), None)
            hint = f" (its name says {guess})" if guess and guess != sam_type else ""
            raise CheckpointError(
                f"SAM 2.1 checkpoint {checkpoint} does not fit {sam_type}{hint}: {len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(wrong)} wrong-shaped tensors"
                + (f" (e.g. {(missing or unexpected or wrong)[0]})" if missing or unexpected or wrong else "")
            )
        model.load_state_dict(state)
    return model.eval()
