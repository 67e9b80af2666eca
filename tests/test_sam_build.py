"""Building SAM by type and loading checkpoints, including every way a file can be wrong."""

from __future__ import annotations

import hashlib

import pytest
import torch

from models.engine.modeling import CheckpointError, build_sam, load_state_dict, sam_model_registry
from models.engine.modeling.build import guess_type

EXPECTED_PARAMS_M = {"vit_b": 93.7, "vit_l": 312.3, "vit_h": 641.1}


@pytest.mark.parametrize("sam_type", sorted(sam_model_registry))
def test_registry_builds_official_shapes(sam_type: str) -> None:
    # Large models are built on the meta device: real shapes, no memory, no init time.
    with torch.device("meta" if sam_type in ("vit_l", "vit_h") else "cpu"):
        sam = build_sam(sam_type)
    params_m = sum(p.numel() for p in sam.parameters()) / 1e6
    if sam_type in EXPECTED_PARAMS_M:
        assert params_m == pytest.approx(EXPECTED_PARAMS_M[sam_type], abs=0.1)
    assert sam.image_encoder.img_size == 1024
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert sam.mask_decoder.num_mask_tokens == 4


def test_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown SAM type 'vit_x'"):
        build_sam("vit_x")


def test_tiny_is_seeded() -> None:
    a, b = build_sam("tiny"), build_sam("tiny")
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_checkpoint_round_trip(tmp_path, tiny_sam) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    loaded = build_sam("tiny", path)
    for key, value in tiny_sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_wrapped_state_dict_is_accepted(tmp_path, tiny_sam) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny_sam.state_dict()}, path)
    assert set(load_state_dict(path)) == set(tiny_sam.state_dict())


def test_truncated_checkpoint(tmp_path, tiny_sam) -> None:
    good = tmp_path / "good.pth"
    torch.save(tiny_sam.state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read the checkpoint"):
        build_sam("tiny", bad)


def test_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint")
    with pytest.raises(
        CheckpointError,
        match=r"notes\.pth: cannot read the checkpoint: not a file torch\.save wrote$",
    ):
        build_sam("tiny", path)


def test_empty_and_missing_files(tmp_path) -> None:
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty\.pth: the checkpoint file is empty"):
        build_sam("tiny", empty)
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such checkpoint"):
        build_sam("tiny", tmp_path / "nope.pth")


def test_wrong_architecture_names_the_likely_type(tmp_path, tiny_sam) -> None:
    path = tmp_path / "tiny_weights.pth"
    torch.save(tiny_sam.state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"tiny_weights\.pth: does not fit SAM vit_b: .*shape mismatches.*looks like a tiny",
    ):
        build_sam("vit_b", path)


def test_non_sam_state_dict(tmp_path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match="does not look like a SAM checkpoint"):
        build_sam("tiny", path)


def test_non_tensor_entries(tmp_path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not tensors"):
        load_state_dict(path)


def test_official_name_hash_is_checked(tmp_path, tiny_sam) -> None:
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(tiny_sam.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"sam_vit_b_01ec64\.pth: sha256 .* does not start with 01ec64"):
        build_sam("vit_b", path)


def test_official_name_with_matching_hash_passes_the_hash_check(tmp_path, tiny_sam) -> None:
    blob = tmp_path / "blob.pth"
    torch.save(tiny_sam.state_dict(), blob)
    prefix = hashlib.sha256(blob.read_bytes()).hexdigest()[:6]
    named = tmp_path / f"sam_vit_b_{prefix}.pth"
    blob.rename(named)
    # The hash matches, so loading proceeds to the architecture check (tiny weights vs vit_b).
    with pytest.raises(CheckpointError, match="does not fit SAM vit_b"):
        build_sam("vit_b", named)


def test_official_name_of_other_type(tmp_path) -> None:
    path = tmp_path / "sam_vit_h_4b8939.pth"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="file name says SAM vit_h but SAM vit_b was requested"):
        build_sam("vit_b", path)


def test_guess_type() -> None:
    assert guess_type({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024)}) == "vit_l"
    assert guess_type({"x": torch.zeros(1)}) is None


def test_the_factory_passes_cache_dtype_to_the_sam_engine(camvid_image) -> None:
    """`cache_dtype: bfloat16` through build_engine: the SAM 1 engine caches a bfloat16 embedding
    (half the bytes), answers masks >= 99.9 % equal to the float32 engine's, and keys its cache apart;
    float32 keeps the namespace it had before the setting existed (name:fingerprint)."""
    import numpy as np

    from models.engine import EngineConfig, Prompt, build_engine

    full = build_engine(EngineConfig(backend="torch", sam_type="tiny"))
    half = build_engine(EngineConfig(backend="torch", sam_type="tiny", cache_dtype="bfloat16"))
    a, b = full.embed([camvid_image])[0], half.embed([camvid_image])[0]
    assert b.payload.embedding.dtype == torch.bfloat16
    assert 2 * half.payload_nbytes(b.payload) == full.payload_nbytes(a.payload)
    assert full.namespace.count(":") == 1 and half.namespace == full.namespace + ":bfloat16"
    prompts = [Prompt(points=[[100.0 + 40 * i, 120.0]], labels=[1]) for i in range(6)]
    prompts.append(Prompt(box=[60.0, 50.0, 300.0, 260.0]))
    ours, theirs = half.predict(b, prompts), full.predict(a, prompts)
    assert np.mean(ours.masks == theirs.masks) >= 0.999


@pytest.mark.parametrize("backend, sam_type", [("torch", "tiny"), ("sam2", "sam2.1_hiera_t")])
def test_a_change_to_any_one_weight_tensor_changes_the_cache_namespace(backend: str, sam_type: str) -> None:
    """Two models must never share cache keys: a model changed in one deep tensor only (here the
    encoder's neck, as a fine-tune that freezes the rest would leave it) gets another namespace;
    the same weights built again get the same one."""
    from models.engine import EngineConfig, build_engine

    config = EngineConfig(backend=backend, sam_type=sam_type, random_weights=0 if backend == "sam2" else None)
    engine, again = build_engine(config), build_engine(config)
    assert engine.namespace == again.namespace
    neck = again.model.image_encoder.neck  # SAM 1's ViT neck; SAM 2's FPN neck
    tensor = next(p for name, p in neck.named_parameters() if name.endswith("weight"))
    with torch.no_grad():
        tensor.view(-1)[-1] += 1e-3  # the last value: outside any leading slice a hash might read
    assert type(again)(again.model, name=again.name).namespace != engine.namespace
