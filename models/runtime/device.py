"""Where training and labelling run: one `device` setting (`auto | cpu | cuda | cuda:N`) and what
follows from it (mixed precision, the DDP backend, pinned host memory).

`auto` is CUDA when a GPU is visible, else the CPU. On the CPU nothing changes: full fp32, no
autocast, `gloo`, so CPU results stay bit-identical to runs made before the setting existed. On
CUDA: autocast in bf16 where the GPU supports it (Ampere and later; no loss scaling needed), else
fp16 with a `GradScaler`; `nccl` for DDP; batches staged in pinned memory and copied without
blocking.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

DEVICE_HELP = "auto (CUDA when present, else cpu), cpu, cuda or cuda:N"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_HELP = (
    "mixed precision on CUDA: auto (bf16 where the GPU has it, else fp16 with loss scaling), bf16, fp16 "
    "or off; the CPU always trains in fp32"
)


def resolve_device(
    name: str | torch.device | None = "auto", *, local_rank: int | None = None
) -> torch.device:
    """`auto | cpu | cuda | cuda:N` -> a torch device; a CUDA device that is not there is a
    ValueError naming the setting. Under torchrun (`LOCAL_RANK` set) a bare `cuda` / `auto` picks
    the rank's own GPU."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is visible to torch (use device: cpu or auto)")
        index = local_rank if name == "cuda" else _index(name)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    raise ValueError(f"device {name!r} unknown; choose {DEVICE_HELP}")


def _index(name: str) -> int:
    try:
        index = int(name.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"device {name!r}: the CUDA index must be a number (cuda:0)") from None
    if index < 0:
        raise ValueError(f"device {name!r}: the CUDA index must be >= 0")
    return index


def check_device_name(name: str, source: str = "device") -> None:
    """Validate the setting's spelling without touching CUDA (config validation)."""
    low = (name or "").strip().lower()
    if low in ("auto", "cpu", "cuda"):
        return
    if low.startswith("cuda:"):
        _index(low)
        return
    raise ValueError(f"{source} {name!r} unknown; choose {DEVICE_HELP}")


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype on `device`, or None for full precision. The CPU always trains in fp32
    (autocast there would change today's results); `auto` on CUDA is bf16 where supported, else fp16."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp {amp!r} unknown; choose one of {AMP_CHOICES}")
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision on `device` in `dtype`; a no-op when `dtype` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 on CUDA (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)


def ddp_backend(device: torch.device) -> str:
    """`nccl` between GPUs, `gloo` between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device`: through pinned memory without blocking on CUDA, unchanged on the CPU."""
    if device.type != "cuda" or tensor.device == device:
        return tensor.to(device)
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class Precision:
    """Mixed precision of one training run: autocast for the forward, loss scaling for fp16.

    On the CPU (or with amp off) `autocast()` does nothing and `step()` is zero_grad, backward,
    optimizer step: exactly the fp32 update."""

    def __init__(self, device: torch.device, amp: str = "auto") -> None:
        self.device = device
        self.dtype = amp_dtype(device, amp)
        self.scaler = grad_scaler(device, self.dtype)

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.device, self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward of `loss` and one optimizer step (scaled, and skipped on inf/nan, under fp16)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
