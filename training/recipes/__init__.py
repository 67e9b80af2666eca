"""Training recipes: one per task, each a file; the generic loop (`training.loop`) runs any of them.

A recipe builds its data and networks, takes one optimisation step, evaluates, and saves its
artefacts; it says which settings each of its modes reads (the resume check).
"""

from __future__ import annotations

from training.recipes.instance import INSTANCE_MODES, InstanceRecipe
from training.recipes.semantic import MODES as SEMANTIC_MODES
from training.recipes.semantic import SemanticRecipe

# task name -> (recipe class, the modes it trains)
RECIPES: dict[str, tuple[type, tuple[str, ...]]] = {
    "semantic": (SemanticRecipe, SEMANTIC_MODES),
    "instance": (InstanceRecipe, INSTANCE_MODES),
}

__all__ = ["INSTANCE_MODES", "RECIPES", "SEMANTIC_MODES", "InstanceRecipe", "SemanticRecipe"]
