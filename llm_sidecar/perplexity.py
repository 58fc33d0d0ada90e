"""Perplexity of a (possibly steered) model on neutral text: exp of the mean token negative
log-likelihood over the whole corpus (right padding, padding masked out)."""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Sequence

import torch

from lineas_engine import LineasError, steered

from .models import LoadedModel
from .progress import progress

__all__ = ["perplexity", "encode_scored"]

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
