"""`sesam settings`: the table of every setting (name, environment variable, default, meaning),
generated from the configuration classes; docs/settings.md is this output."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.config import settings_markdown
from models.engine import EngineConfig
from models.engine.classical import ClassicalOptions
from models.io import atomic_write_text
from models.labels import GroundedOptions, NaiveOptions, SEPLOptions, SeSAMOptions, WeakSAMOptions
from models.labels.wish_tags import TagPointOptions
from serving.config import ServiceConfig
from training.trainer import ENV_PREFIX as TRAIN_PREFIX
from training.trainer import InstanceTrainConfig, TrainConfig
from training.weaksam import DetectorConfig, WSODConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
SECTIONS = (
    (
        "Engine",
        "`engine:` in YAML (service and training configs), `SESAM_*`, `--backend`... flags.",
        EngineConfig,
        "SESAM_",
    ),
    (
        "Classical prior",
        "`engine.classical` in YAML, `--set engine.classical.<name>=...` (chosen on Penn-Fudan train, "
        "docs/engine.md).",
        ClassicalOptions,
        None,
    ),
    ("Service", "`service:` in the YAML named by `SESAM_CONFIG`, and `SESAM_*`.", ServiceConfig, "SESAM_"),
    (
        "Training",
        "`sesam train --config FILE.yaml`, `SESAM_TRAIN_*`, `--set key=value`.",
        TrainConfig,
        TRAIN_PREFIX,
    ),
    (
        "Instance training (WISH)",
        "`sesam train --config FILE.yaml` with `mode: wish` or `supervised-instance`, `SESAM_TRAIN_*`, "
        "`--set key=value` (docs/wish.md).",
        InstanceTrainConfig,
        TRAIN_PREFIX,
    ),
    (
        "WISH tags -> points",
        "`tag_points:` in an instance training config.",
        TagPointOptions,
        None,
    ),
    (
        "SeSAM labeler",
        "`sesam:` in a training config, `options` of `/refine`, `sesam refine` flags.",
        SeSAMOptions,
        None,
    ),
    ("Naive labeler", "`naive:` in a training config, `options` of `/refine`.", NaiveOptions, None),
    (
        "SEPL labeler",
        "`options` of `/refine` with `method=sepl`, `sesam refine --method sepl` flags.",
        SEPLOptions,
        None,
    ),
    (
        "WeakSAM labeler",
        "`options` of `/refine` with `method=weaksam`, `sesam refine --method weaksam --set ...`, "
        "`sesam weaksam proposals / instances --set ...` (docs/tags.md).",
        WeakSAMOptions,
        None,
    ),
    (
        "WeakSAM WSOD head",
        "`sesam weaksam train-wsod --set key=value` (docs/tags.md).",
        WSODConfig,
        None,
    ),
    (
        "WeakSAM retraining (Faster R-CNN with RoI drop)",
        "`sesam weaksam retrain --set key=value` (docs/tags.md).",
        DetectorConfig,
        None,
    ),
    (
        "Grounded-tags labeler",
        "`options` of `/refine` with `method=grounded` (the detector comes from `SESAM_DETECTOR`), "
        "`sesam refine --method grounded` flags (docs/tags.md).",
        GroundedOptions,
        None,
    ),
)


def markdown() -> str:
    return settings_markdown(SECTIONS, root=DOC.parents[1])


def run_settings(args: argparse.Namespace) -> int:
    text = markdown()
    if args.write:
        atomic_write_text(DOC, text)
        print(f"wrote {DOC}")
    else:
        print(text, end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("settings", help="print the table of every setting (docs/settings.md)")
    p.add_argument("--write", action="store_true", help=f"write it to {DOC.name} in docs/")
    p.set_defaults(func=run_settings)
