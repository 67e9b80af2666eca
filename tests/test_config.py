"""One configuration mechanism: the same coercion and errors for engine, labelers, trainer, service."""

from __future__ import annotations

import pytest

from models.config import coerce, load, parse_overrides
from models.engine import EngineConfig
from models.engine.classical import ClassicalPrior
from models.labels import SeSAMOptions, build_labeler
from serving.config import ServiceConfig
from sesam.settings import DOC, markdown
from training.trainer import TrainConfig


def test_the_same_bad_value_gets_the_same_error_everywhere(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"environment: cache_bytes = 'lots' is not a valid int"):
        EngineConfig.from_env({"SESAM_CACHE_BYTES": "lots"})
    with pytest.raises(ValueError, match=r"environment: max_prompts = 'lots' is not a valid int"):
        ServiceConfig.load({"SESAM_MAX_PROMPTS": "lots"})
    yaml_path = tmp_path / "t.yaml"
    yaml_path.write_text("camvid_root: x\n")
    with pytest.raises(ValueError, match=r"--set: iterations = 'lots' is not a valid int"):
        TrainConfig.from_yaml(yaml_path, ["iterations=lots"])
    with pytest.raises(ValueError, match=r"sesam options: k = 'many' is not a valid int"):
        build_labeler("sesam", ClassicalPrior(), k="many")
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]; known: \["):
        EngineConfig.from_mapping({"colour": 1})


def test_coercion() -> None:
    assert coerce("yes", bool, "x", "s") is True and coerce("off", bool, "x", "s") is False
    assert coerce("auto", bool | None, "x", "s") is None
    assert coerce("none", str | None, "x", "s") is None
    assert coerce("160,224", tuple[int, int], "crop", "s") == (160, 224)
    assert coerce([60, 200, 600], str | None, "scales", "s") == "60,200,600"
    for raw, kind in (("maybe", bool), (1.5, int), ({"a": 1}, str), ("[1, 2]", dict)):
        with pytest.raises(ValueError, match="is not a valid"):
            coerce(raw, kind, "x", "s")


def test_precedence_yaml_then_environment_then_set(tmp_path, monkeypatch) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("camvid_root: x\niterations: 5\nlr: 0.1\nengine: {backend: classical, cache_bytes: 7}\n")
    monkeypatch.setenv("SESAM_TRAIN_ITERATIONS", "6")
    monkeypatch.setenv("SESAM_TRAIN_LR", "0.2")
    cfg = TrainConfig.from_yaml(path, ["lr=0.3", "engine.classical_scales=[30, 100, 300]", "sesam.k=3"])
    assert (cfg.iterations, cfg.lr) == (6, 0.3)
    assert cfg.engine == {"backend": "classical", "cache_bytes": 7, "classical_scales": [30, 100, 300]}
    assert cfg.sesam == {"k": 3}
    assert parse_overrides(["a.b.c=1", "d=x"]) == {"a": {"b": {"c": 1}}, "d": "x"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides(["iterations"])
    with pytest.raises(ValueError, match=r"sesam: k must be >= 1"):
        TrainConfig.from_yaml(path, ["sesam.k=0"])
    assert load(SeSAMOptions, yaml_values={"tau1": "0.5"}).tau1 == 0.5


def test_service_reads_yaml_sections_and_environment(tmp_path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("engine: {backend: classical}\nservice: {max_prompts: 9, student_checkpoint: none}\n")
    config = ServiceConfig.load({"SESAM_CONFIG": str(path), "SESAM_MAX_PROMPTS": "11"})
    assert config.engine.backend == "classical" and config.max_prompts == 11
    assert config.student_checkpoint is None and config.batching is False
    path.write_text("serving: {}\n")
    with pytest.raises(ValueError, match=r"unknown sections \['serving'\]"):
        ServiceConfig.load({"SESAM_CONFIG": str(path)})


def test_settings_page_is_generated_from_the_code() -> None:
    assert DOC.read_text() == markdown(), "docs/settings.md is stale: run `sesam settings --write`"
    for name in (
        "SESAM_BACKEND",
        "SESAM_MAX_PROMPTS",
        "SESAM_TRAIN_ITERATIONS",
        "`theta2`",
        "`points_per_side`",
    ):
        assert name in DOC.read_text()
