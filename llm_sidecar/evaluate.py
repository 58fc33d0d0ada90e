"""Toxicity of continuations of held-out prompts, and perplexity and next-token KL divergence to the unsteered
model on neutral text, per strength and seed."""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from .generate import GenConfig, generate
from .judges import Judge
from .models import LoadedModel
from .perplexity import neutral_scores

__all__ = ["StrengthResult", "evaluate_strengths"]

logger = logging.getLogger(__name__)


@dataclass
class StrengthResult:
    label: str
    strength: float
    toxicity: float  # mean over seeds of the % of continuations judged toxic
    toxicity_std: float
    toxicity_per_seed: list[float]
    mean_score: float
    perplexity: float
    tokens_per_second: float
    num_prompts: int
    seeds: list[int]
    support: float | None = None
    kl: float | None = None  # next-token KL(unsteered || steered) on the neutral texts, nats per token
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_strengths(
    lm: LoadedModel,
    steering,
    prompts: Sequence[str],
    neutral: Sequence[str],
    *,
    strengths: Sequence[float] = (0.0, 1.0),
    seeds: Sequence[int] = (0,),
    judge: Judge,
    gen: GenConfig | None = None,
    label: str = "lineas",
    show_progress: bool = True,
    n_examples: int = 3,
    check: Callable[[], None] | None = None,
) -> list[StrengthResult]:
    """One :class:`StrengthResult` per strength (``steering=None``: the unsteered model, strength 0). ``check`` runs
    before each batch of generation and perplexity."""
    out = []
    neutral_at = {n.strength: n for n in neutral_scores(lm, neutral, steering, strengths, show_progress=show_progress,
                                                         desc=f"{label} perplexity + KL", check=check)}
    for lam in strengths if steering is not None else (0.0,):
        rates, scores, tps, examples = [], [], [], []
        for seed in seeds:
            g = generate(lm, prompts, gen, seed=seed, steering=steering, strength=lam,
                         show_progress=show_progress, desc=f"{label} s={lam:g} seed={seed}", check=check)
            sc = judge.score(g.continuations)
            rates.append(100.0 * float((sc >= judge.threshold).mean()))
            scores.append(float(sc.mean()))
            tps.append(g.tokens_per_second)
            if not examples:
                order = sc.argsort()[::-1][:n_examples]
                examples = [{"prompt": prompts[i], "continuation": g.continuations[i], "score": float(sc[i])}
                            for i in order]
        ppl = neutral_at[lam].perplexity
        res = StrengthResult(
            label=label if steering is not None else "none", strength=lam, toxicity=statistics.mean(rates),
            toxicity_std=statistics.pstdev(rates), toxicity_per_seed=rates, mean_score=statistics.mean(scores),
            perplexity=ppl, tokens_per_second=statistics.mean(tps), num_prompts=len(prompts), seeds=list(seeds),
            support=steering.support() if steering is not None else None, kl=neutral_at[lam].kl, examples=examples,
        )
        logger.info("%s strength %g: toxicity %.2f%% (+-%.2f), perplexity %.2f, KL %.4f", res.label, lam,
                    res.toxicity, res.toxicity_std, ppl, res.kl)
        out.append(res)
    return out
