"""Building the toxic (source) and non-toxic (target) sets from prompts: continue each prompt with the
model, score prompt + continuation with the judge, keep the most and the least toxic."""

from __future__ import annotations

import logging
from typing import Sequence

from .data import select_extremes
from .generate import GenConfig, generate
from .judges import Judge
from .models import LoadedModel

__all__ = ["build_sets"]

logger = logging.getLogger(__name__)


def build_sets(lm: LoadedModel, prompts: Sequence[str], n: int, judge: Judge, gen: GenConfig | None = None, *,
               seed: int = 0, continue_prompts: bool = True) -> tuple[list[str], list[str]]:
    """``(toxic, non_toxic)``, ``n`` texts each. With ``continue_prompts=False`` the prompts themselves
    are scored (fast; no generation)."""
    prompts = list(dict.fromkeys(prompts))
    if continue_prompts:
        g = generate(lm, prompts, gen, seed=seed, desc="continue training prompts")
        texts = [p + c for p, c in zip(prompts, g.continuations)]
    else:
        texts = prompts
    scores = judge.score(texts)
    toxic, clean = select_extremes(texts, list(scores), n)
    logger.info("built %d toxic (mean score %.2f) and %d non-toxic texts from %d prompts", len(toxic),
                float(sorted(scores)[-n:][0]), len(clean), len(prompts))
    return toxic, clean
