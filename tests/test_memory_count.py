"""bench/comfy_memory's saved-tensor count against hand-counted cases."""

from __future__ import annotations

import torch


def test_memory_count_counts_each_saved_storage_once():
    """bench.comfy_memory's saved-tensor count: a tensor saved by two ops, and a view of it, are one piece of
    memory; a second tensor of the same size is another."""
    from bench.comfy_memory import _Counter

    for device in ("cpu", "meta"):
        w = torch.nn.Parameter(torch.ones(4, 4, device=device))
        counter = _Counter([w])
        x = torch.ones(3, 5, device=device, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            h = x * 2  # saves nothing of x's (constant factor)
            a = h * h  # saves h (twice: both operands)
            b = h[:2] * x[:2]  # saves a view of h and a view of x
        assert counter.A == 2 * 3 * 5 * 4, (device, counter.A)  # h and x, once each
        del a, b
