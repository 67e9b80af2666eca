"""The `device` setting: its resolution, mixed precision, and every tensor a training run makes on
the device the setting names. Here on the CPU; the same runs on CUDA (`gpu`-marked: SeSAM and WISH
with SAM in the loop, and DDP over nccl) wherever a GPU is present."""

from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from models.engine.base import backend_payload
from models.runtime.device import Precision, amp_dtype, ddp_backend, resolve_device
from tests.test_training import tiny_config, tiny_dataset, torchrun_sesam
from tests.test_wish import _config as wish_config
from tests.test_wish import folder  # noqa: F401  (the module-scoped toy instance scene)
from training.trainer import InstanceTrainConfig, InstanceTrainer, TrainConfig, Trainer

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)
TINY_SAM = {"backend": "torch", "sam_type": "tiny", "cache_bytes": 1 << 30}


# -- the setting -----------------------------------------------------------------------------------
def test_resolve_device_on_a_host_without_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device 'cuda': no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"device 'tpu' unknown"):
        resolve_device("tpu")


def test_resolve_device_picks_the_ranks_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # torchrun's LOCAL_RANK
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)  # named: kept
    with pytest.raises(ValueError, match=r"only 2 CUDA device"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match=r"must be a number"):
        resolve_device("cuda:x")


def test_mixed_precision_choices(monkeypatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "bf16") is None  # the CPU trains in fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(gpu, "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert amp_dtype(gpu, "auto") == torch.float16  # pre-Ampere: fp16 with a loss scaler
    assert amp_dtype(gpu, "fp16") == torch.float16 and amp_dtype(gpu, "off") is None
    with pytest.raises(ValueError, match="amp 'fp8' unknown"):
        amp_dtype(gpu, "fp8")
    assert (ddp_backend(cpu), ddp_backend(gpu)) == ("gloo", "nccl")
    assert Precision(cpu).name == "fp32" and not Precision(cpu).scaler.is_enabled()


def test_cpu_precision_step_is_the_plain_fp32_update() -> None:
    """On the CPU, `Precision.step` under `autocast()` is exactly zero_grad, backward, step."""
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = copy.deepcopy(a)
    x = torch.randn(5, 4)
    opt_a, opt_b = torch.optim.AdamW(a.parameters(), 1e-2), torch.optim.AdamW(b.parameters(), 1e-2)
    precision = Precision(torch.device("cpu"))
    for _ in range(3):
        with precision.autocast():
            out = a(x)
        assert out.dtype == torch.float32
        precision.step(out.square().mean(), opt_a)
        opt_b.zero_grad()
        b(x).square().mean().backward()
        opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("config", [TrainConfig, InstanceTrainConfig])
def test_configs_name_a_bad_device(config) -> None:
    base = {"train_images": "x", "train_weak": "x"} if config is TrainConfig else {"data_root": "x"}
    with pytest.raises(ValueError, match=r"device 'gpu' unknown"):
        config.from_mapping(base | {"device": "gpu"}).validate()
    with pytest.raises(ValueError, match=r"amp 'half' unknown"):
        config.from_mapping(base | {"amp": "half"}).validate()


# -- every tensor on the configured device -----------------------------------------------------------
def optimizer_moments(optimizer: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    """AdamW's per-parameter moments, without its `step` counters: torch keeps those on the CPU by
    design unless the optimizer is fused or capturable (seen on an H200: `step` on cpu, moments on cuda)."""
    states = optimizer.state_dict()["state"].values()
    moments = [{k: v for k, v in state.items() if k != "step"} for state in states]
    assert moments and all(moments), "the optimizer stepped, so it has moments"
    return moments


def devices_of(value: Any, seen: set[int] | None = None) -> set[torch.device]:
    """The devices of every tensor inside `value` (tensors, modules, dicts, sequences, dataclasses)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return set()
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return {value.device}
    if isinstance(value, torch.nn.Module):
        return {t.device for t in (*value.parameters(), *value.buffers())}
    if isinstance(value, dict):
        return set().union(*(devices_of(v, seen) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(devices_of(v, seen) for v in value)) if value else set()
    if is_dataclass(value) and not isinstance(value, type):
        return set().union(*(devices_of(getattr(value, f.name), seen) for f in fields(value)))
    return set()


Seen = list[tuple[str, set[torch.device]]]


def record(monkeypatch, module: Any, names: list[str], seen: Seen) -> None:
    """Wrap `module.<name>` so every call records the devices of its tensor arguments."""
    for name in names:
        original = getattr(module, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, devices_of(list(args) + list(kwargs.values()))))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)


def forward_inputs(model: torch.nn.Module, name: str, seen: Seen) -> None:
    model.register_forward_pre_hook(lambda _m, args: seen.append((name, devices_of(list(args)))))


def check(seen: Seen, want: torch.device, names: set[str]) -> None:
    """Every recorded call was made, and with tensors on `want` only."""
    assert {name for name, _ in seen} == names
    wrong = [(name, found) for name, found in seen if found != {want}]
    assert not wrong, wrong


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_sesam_runs_every_tensor_on_the_device(tmp_path, monkeypatch, device: str) -> None:
    """SeSAM with a torch SAM in the loop: student, EMA teacher, optimizer state, batches, targets,
    losses and SAM's cached embeddings all on the device the setting names."""
    import training.recipes.semantic as semantic

    want = resolve_device(device)
    seen: Seen = []
    record(monkeypatch, semantic, ["sesam_loss", "partial_ce", "ema_update"], seen)
    cfg = tiny_config(tmp_path, "sesam", device=device, engine=TINY_SAM, sam_every=1, iterations=3)
    trainer = Trainer(cfg, train_ds=tiny_dataset(), val_ds=tiny_dataset(2, seed=1))
    recipe = trainer.recipe
    forward_inputs(recipe.student, "student", seen)
    forward_inputs(recipe.teacher, "teacher", seen)
    summary = trainer.train()
    assert summary["device"] == str(want) and summary["reencoded_images"] == 0
    assert summary["precision"] == ("fp32" if want.type == "cpu" else "bfloat16")
    check(seen, want, {"sesam_loss", "partial_ce", "ema_update", "student", "teacher"})
    for part in (recipe.student, recipe.teacher, optimizer_moments(recipe.optimizer)):
        assert devices_of(part) == {want}
    embeddings = [
        backend_payload(recipe.engine.cache.peek(k)).embedding for k in recipe.embedded.keys.values()
    ]
    assert len(embeddings) == 6 and {e.device for e in embeddings} == {want}  # SAM beside the student


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_wish_runs_every_tensor_on_the_device(folder: Path, tmp_path, monkeypatch, device: str) -> None:  # noqa: F811
    """WISH with a torch SAM in the loop, points, boxes and tags: the student and its heads, the
    optimizer state, the targets (latents from SAM's own prompt encoder, candidates), the matching,
    L_seg, L_cam and L_self on the device the setting names."""
    import training.recipes.instance as instance

    want = resolve_device(device)
    seen: Seen = []
    record(monkeypatch, instance, ["match", "seg_loss", "cam_loss", "self_loss"], seen)
    mix = {"labels": "mix", "label_counts": [4, 3, 3], "iterations": 3, "batch_size": 4}
    trainer = InstanceTrainer(wish_config(folder, tmp_path, device=device, engine=TINY_SAM, **mix))
    recipe = trainer.recipe
    forward_inputs(recipe.model, "student", seen)
    summary = trainer.train()
    assert summary["device"] == str(want) and summary["reencoded_images"] == 0
    assert "prompt encoder of sam-tiny" in summary["prompt_encoder"]
    assert recipe.latents.device == want  # SAM's encoder where SAM runs
    check(seen, want, {"match", "seg_loss", "cam_loss", "self_loss", "student"})
    assert devices_of(recipe.model) == {want}
    assert devices_of(optimizer_moments(recipe.optimizer)) == {want}


# -- DDP over nccl ----------------------------------------------------------------------------------
@pytest.mark.gpu
def test_ddp_over_nccl(tmp_path) -> None:
    """torchrun on the GPUs present (2 when there are, else 1): SeSAM with a torch SAM on each rank's
    GPU, the process group on nccl, the replicas identical at the end."""
    ranks = min(2, torch.cuda.device_count())
    summaries = torchrun_sesam(tmp_path, ranks, device="cuda", engine=TINY_SAM)
    assert {s["ddp_backend"] for s in summaries} == {"nccl"}
    assert [s["device"] for s in summaries] == [f"cuda:{r}" for r in range(ranks)]
    assert len({s["parameters_sha256"] for s in summaries}) == 1
