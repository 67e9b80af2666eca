"""Training recipes: one per task, each a file; the generic loop (`training.loop`) runs any of them.

A recipe builds its data and networks, takes one optimisation step, evaluates, and saves its
artefacts; it says which settings each of its modes reads (the resume check). `RECIPES` names them
in the registry shape of `models.config` (`register` / `lookup`): task name -> the recipe class.
"""

from __future__ import annotations

from models.config import lookup, register
from training.recipes.detector import DetectorRecipe
from training.recipes.instance import INSTANCE_MODES, InstanceRecipe
from training.recipes.semantic import MODES as SEMANTIC_MODES
from training.recipes.semantic import SemanticRecipe
from training.recipes.wsod import WSODRecipe

# task name -> the recipe class (its constructor builds the recipe)
RECIPES: dict[str, type] = {}
register(RECIPES, "semantic")(SemanticRecipe)
register(RECIPES, "instance")(InstanceRecipe)
register(RECIPES, "wsod")(WSODRecipe)
register(RECIPES, "detector")(DetectorRecipe)


def recipe_class(name: str) -> type:
    """The recipe registered as `name`; an unknown name is a ValueError listing the known ones."""
    return lookup(RECIPES, name, "recipe")


__all__ = [
    "INSTANCE_MODES",
    "RECIPES",
    "SEMANTIC_MODES",
    "DetectorRecipe",
    "InstanceRecipe",
    "SemanticRecipe",
    "WSODRecipe",
    "recipe_class",
]
