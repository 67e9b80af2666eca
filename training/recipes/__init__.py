"""Training recipes: one per task, each a file; the generic loop (`training.loop`) runs any of them.

A recipe builds its data and networks, takes one optimisation step, evaluates, and saves its
artefacts; it says which settings each of its modes reads (the resume check). Each task's entry
point builds its recipe directly: `training.trainer.build_trainer` (semantic, instance) and
`training.weaksam` (wsod, detector).
"""

from __future__ import annotations

from training.recipes.detector import DetectorRecipe
from training.recipes.instance import INSTANCE_MODES, InstanceRecipe
from training.recipes.semantic import MODES as SEMANTIC_MODES
from training.recipes.semantic import SemanticRecipe
from training.recipes.wsod import WSODRecipe

__all__ = [
    "INSTANCE_MODES",
    "SEMANTIC_MODES",
    "DetectorRecipe",
    "InstanceRecipe",
    "SemanticRecipe",
    "WSODRecipe",
]
