"""Sample dicts: tensors with a leading sample axis N (other values are passed through), sliced into
mini-batches for the host's forward. An optional integer tensor under ``TrainConfig.group_key`` (e.g. the
noise level of each diffusion sample) makes the loss compare source and target within each group only."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch

from .errors import LineasError

__all__ = ["num_samples", "slice_samples", "sample_groups", "minibatches"]


def num_samples(inputs: Mapping[str, Any]) -> int:
    sizes = {k: v.shape[0] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if not sizes:
        raise LineasError("inputs hold no tensor with a leading sample axis")
    if len(set(sizes.values())) != 1:
        raise LineasError(f"inputs disagree on the number of samples: {sizes}")
    return next(iter(sizes.values()))


def slice_samples(inputs: Mapping[str, Any], idx: torch.Tensor | slice) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            out[k] = v[idx] if isinstance(idx, slice) else v.index_select(0, idx.to(v.device))
        else:
            out[k] = v
    return out


def sample_groups(inputs: Mapping[str, Any], key: str | None) -> torch.Tensor | None:
    """The group of each sample (on the CPU), or None when the inputs carry none."""
    g = inputs.get(key) if key else None
    return g.detach().cpu() if isinstance(g, torch.Tensor) else None


def minibatches(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless sample indices: every sample once per epoch in a seeded random order (the last partial
    batch is dropped); all samples each time when ``size >= n``."""
    if size >= n:
        while True:
            yield torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - size + 1, size):
            yield perm[start:start + size]
