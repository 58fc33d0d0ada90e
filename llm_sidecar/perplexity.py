"""Perplexity of a (possibly steered) model on neutral text: exp of the mean token negative
log-likelihood over the whole corpus (right padding, padding masked out); and, next to it, the KL divergence
of the steered model's next-token distribution from the unsteered one's on the same tokens (what a steering
changes on text it should leave alone, a finer measure than perplexity: 0 only when nothing changed)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lineas_engine import LineasError, steered

from .models import LoadedModel
from .progress import progress

__all__ = ["perplexity", "encode_scored", "NeutralScore", "neutral_scores"]

logger = logging.getLogger(__name__)


def encode_scored(tokenizer, texts: Sequence[str], max_length: int = 128):
    """Texts tokenized for scoring every next token: right padding (the tokenizer's own side is restored),
    truncated to ``max_length``; ``attention_mask[:, 1:]`` marks the predicted tokens."""
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    finally:
        tokenizer.padding_side = old_side


def perplexity(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    steering=None,
    strength: float = 1.0,
    batch_size: int = 16,
    max_length: int = 128,
    show_progress: bool = True,
    desc: str = "perplexity",
    check: Callable[[], None] | None = None,
) -> float:
    """Corpus perplexity of ``lm`` (under ``steering`` at ``strength``) on ``texts``; ``check`` runs before each
    batch."""
    tok, model = lm.tokenizer, lm.model
    nll, count = 0.0, 0
    ctx = steered(model, steering, strength)
    start = time.perf_counter()
    with ctx, torch.no_grad():
        for i in progress(range(0, len(texts), batch_size), desc=desc, enabled=show_progress, check=check,
                          unit="batch"):
            enc = encode_scored(tok, texts[i : i + batch_size], max_length).to(lm.device)
            logits = model(**enc).logits.float()
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            nll -= logp[mask].sum().item()
            count += int(mask.sum())
    logger.info("perplexity on %d texts (%d tokens) in %.1f s", len(texts), count, time.perf_counter() - start)
    if count == 0:  # exp(0 / 1) = 1.00 would read as a perfect model
        raise LineasError(f"no token to score in the {len(texts)} perplexity text(s): each needs at least two "
                          "tokens (the first is never predicted); give full sentences")
    return math.exp(nll / count)


@dataclass(frozen=True)
class NeutralScore:
    strength: float
    perplexity: float
    kl: float  # mean over scored tokens of KL(unsteered || steered) of the next-token distribution, nats


def neutral_scores(
    lm: LoadedModel,
    texts: Sequence[str],
    steering,
    strengths: Sequence[float],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    show_progress: bool = True,
    desc: str = "perplexity + KL",
    check: Callable[[], None] | None = None,
) -> list[NeutralScore]:
    """Perplexity and next-token KL to the unsteered model at each strength, in one pass over ``texts``: each
    batch runs the unsteered model once and the steered one once per strength (strength 0 or ``steering=None``:
    the unsteered pass itself, KL 0). Same tokens and batches as :func:`perplexity`, so its figures are equal."""
    tok, model = lm.tokenizer, lm.model
    strengths = list(strengths) if steering is not None else [0.0]
    nll, kl, count = [0.0] * len(strengths), [0.0] * len(strengths), 0
    with torch.no_grad():
        for i in progress(range(0, len(texts), batch_size), desc=desc, enabled=show_progress, check=check,
                          unit="batch"):
            enc = encode_scored(tok, texts[i : i + batch_size], max_length).to(lm.device)
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            base = torch.log_softmax(model(**enc).logits[:, :-1].float(), dim=-1)
            for k, lam in enumerate(strengths):
                if steering is None or lam == 0:
                    logp = base
                else:
                    with steered(model, steering, lam):
                        logp = torch.log_softmax(model(**enc).logits[:, :-1].float(), dim=-1)
                    for row in range(logp.shape[0]):  # one text at a time: no second [B, T, V] temporary
                        per_token = (base[row].exp() * (base[row] - logp[row])).sum(dim=-1)
                        kl[k] += per_token[mask[row]].sum().item()
                nll[k] -= logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)[mask].sum().item()
                del logp
            count += int(mask.sum())
    if count == 0:
        raise LineasError(f"no token to score in the {len(texts)} neutral text(s): each needs at least two "
                          "tokens (the first is never predicted); give full sentences")
    return [NeutralScore(lam, math.exp(n / count), k / count) for lam, n, k in zip(strengths, nll, kl)]
