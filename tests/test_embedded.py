"""SAM in the loop holds embeddings only within the engine's cache budget."""

from __future__ import annotations

import gc
import weakref

from models.engine import EngineConfig, build_engine
from tests.test_training import tiny_config, tiny_dataset
from training.trainer import Trainer


def _watch_payloads(monkeypatch) -> list[weakref.ref]:
    """Patch the semantic recipe's build_engine so its engine records a weak reference to every
    payload it encodes."""
    import training.recipes.semantic as semantic

    refs: list[weakref.ref] = []
    original = semantic.build_engine

    def build(config):
        engine = original(config)
        encode = engine._encode

        def watched(images):
            payloads = encode(images)
            refs.extend(weakref.ref(p) for p in payloads)
            return payloads

        engine._encode = watched
        return engine

    monkeypatch.setattr(semantic, "build_engine", build)
    return refs


def test_embeddings_stay_within_the_cache_budget(tmp_path, monkeypatch) -> None:
    """Six training images, a cache that holds two embeddings: after the up-front embedding only the
    cached payloads are alive (the recipe keeps keys, not handles); SeSAM re-encodes the evicted
    images it refreshes, and its labels and weights equal those of a run whose cache holds all six."""
    ds, val = tiny_dataset(), tiny_dataset(2, seed=1)
    probe = build_engine(EngineConfig(backend="classical"))
    one = probe.payload_nbytes(probe.embed([ds.images[0]])[0].payload)
    summaries, labels = {}, {}
    for name, budget in (("small", int(2.5 * one)), ("large", 1 << 30)):
        refs = _watch_payloads(monkeypatch)
        cfg = tiny_config(
            tmp_path,
            "sesam",
            engine={"backend": "classical", "cache_bytes": budget},
            sam_every=1,
            iterations=4,
        )
        cfg.out_dir = str(tmp_path / name)
        trainer = Trainer(cfg, train_ds=ds, val_ds=val)
        trainer.recipe.prepare()
        gc.collect()
        alive = sum(ref() is not None for ref in refs)
        assert len(refs) == 6 and alive == len(trainer.recipe.engine.cache) == (2 if name == "small" else 6)
        summaries[name] = trainer.train()
        labels[name] = trainer.recipe.sam_labels
        assert trainer.recipe.engine.cache.nbytes <= budget
    assert summaries["large"]["reencoded_images"] == 0
    assert summaries["small"]["reencoded_images"] > 0  # evicted images came back through the encoder
    assert summaries["small"]["weights_sha256"] == summaries["large"]["weights_sha256"]
    assert labels["small"].keys() == labels["large"].keys()
    assert all((labels["small"][k] == labels["large"][k]).all() for k in labels["small"])
