"""Chat-formatted training texts share their first tokens (the template's system prompt and user header: 24 of
SmolLM2-Instruct's ~47). Training runs them once per forward, under the steering, and the whole batch reads
their KV cache; each sample keeps only its own tokens, from the end of the shared prefix to its last pooled
token (the template's trailing tokens come after everything that is pooled, so in a causal model they change
nothing that training reads). The pooled activations are those of the full formatted texts, up to float
rounding (tested against the full forward); a training step costs about what it costs on raw text."""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch

from lineas_engine import context_pass, forward_recorded, slice_samples

__all__ = ["split_shared_prefix", "prefixed_forward", "prefix_difference"]


def _rows(batch: dict, mask_key: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each sample's tokens and pooling mask without its padding."""
    out = []
    for ids, attn, pooled in zip(batch["input_ids"], batch["attention_mask"], batch[mask_key]):
        keep = attn.bool()
        out.append((ids[keep], pooled[keep]))
    return out


def _common_length(rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Length of the token prefix every row shares, ending before any row's first pooled token."""
    first = rows[0][0]
    n = min(len(first), *(int(m.nonzero()[0]) if m.any() else 0 for _, m in rows))
    for ids, _ in rows:
        same = (ids[:n] == first[:n]).long()
        n = int(same.cumprod(0).sum()) if n else 0
    return n


def split_shared_prefix(batches: Sequence[dict], mask_key: str, pad_id: int) -> tuple[torch.Tensor | None, list[dict]]:
    """``(prefix [1, P], batches)``: the token prefix shared by every sample of every batch and, per batch, each
    sample's tokens after it up to its last pooled token, right-padded (``input_ids``, ``attention_mask``,
    ``mask_key``). No shared prefix (or a sample with nothing pooled): ``(None, batches)`` unchanged."""
    all_rows = [_rows(b, mask_key) for b in batches]
    flat = [r for rows in all_rows for r in rows]
    if not flat or any(not m.any() for _, m in flat):
        return None, list(batches)
    n = _common_length(flat)
    if n == 0:
        return None, list(batches)
    out = []
    for rows in all_rows:
        tails = [(ids[n: int(m.nonzero()[-1]) + 1], m[n: int(m.nonzero()[-1]) + 1]) for ids, m in rows]
        width = max(len(t) for t, _ in tails)
        ids = torch.full((len(tails), width), pad_id, dtype=rows[0][0].dtype)
        attn = torch.zeros(len(tails), width, dtype=torch.long)
        pooled = torch.zeros(len(tails), width, dtype=rows[0][1].dtype)
        for i, (t, m) in enumerate(tails):
            ids[i, : len(t)], attn[i, : len(t)], pooled[i, : len(t)] = t, 1, m
        out.append({"input_ids": ids, "attention_mask": attn, mask_key: pooled})
    return flat[0][0][:n].unsqueeze(0), out


def prefixed_forward(model, prefix: torch.Tensor, device) -> Callable[[dict], object]:
    """The training forward for batches from :func:`split_shared_prefix`: the prefix once (steered, not recorded,
    see :func:`lineas_engine.context_pass`), its KV cache repeated for the batch, then the samples' own tokens."""
    prefix = prefix.to(device)
    # transformers 5.2x renamed the argument and the output field `past_key_values` to `cache`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(b: dict):
        ids, attn = b["input_ids"].to(device), b["attention_mask"].to(device)
        with context_pass():
            out = model(input_ids=prefix, use_cache=True)
        cache = getattr(out, name)
        cache.batch_repeat_interleave(ids.shape[0])
        full = torch.cat([attn.new_ones(ids.shape[0], prefix.shape[1]), attn], dim=1)
        return model(input_ids=ids, attention_mask=full, use_cache=True, **{name: cache})

    return forward


def prefix_difference(model, specs, full_forward, forward, full: dict, short: dict, mask_key: str,
                      samples: int = 2) -> float:
    """Largest difference, relative to the largest activation, between the unsteered pooled activations of the
    first ``samples`` texts run whole (``full_forward``) and through :func:`prefixed_forward`: a check, before
    training, that the model's cache and positions behave as this module assumes (else: train on the full texts)."""
    part = slice(0, samples)
    with torch.no_grad():
        want, _ = forward_recorded(model, specs, full_forward, slice_samples(full, part), mask_key=mask_key)
        got, _ = forward_recorded(model, specs, forward, slice_samples(short, part), mask_key=mask_key)
    return max(float((got[s].float() - want[s].float()).abs().max() / want[s].float().abs().max().clamp_min(1e-12))
               for s in want)
