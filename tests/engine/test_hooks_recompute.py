"""Recording under gradient checkpointing: the recompute pass (marked by ``recomputing()``) steers again but
does not record a second time, and the gradient equals the one without checkpointing."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lineas_engine import Recorder, SiteSpec, Steering, attach
from lineas_engine.hooks import is_recomputing, recomputing


class Net(nn.Module):
    def __init__(self, ckpt: bool):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Tanh()) for _ in range(3))
        self.ckpt = ckpt

    def forward(self, x):
        for b in self.blocks:
            if self.ckpt:
                x = checkpoint(b, x, use_reentrant=False,
                               context_fn=lambda: (contextlib.nullcontext(), recomputing()))
            else:
                x = b(x)
        return x


def _run(ckpt: bool):
    net = Net(ckpt).requires_grad_(False)
    sites = [f"blocks.{i}.1" for i in range(3)]
    steering = Steering({s: SiteSpec(6, channel_axis=-1) for s in sites})
    with torch.no_grad():
        for i, s in enumerate(sites):
            steering.weight(s).add_(0.1 * (i + 1))
    rec = Recorder(steering.specs)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    with attach(net, steering, recorder=rec):  # hooks live through backward: the recompute pass runs them
        net(x)
        acts = rec.take()
        sum(a.square().sum() for a in acts.values()).backward()
    return torch.cat([p.grad.flatten() for p in steering.parameters()]), rec


def test_recompute_steers_again_records_nothing_same_gradient():
    g_plain, _ = _run(False)
    g_ckpt, rec = _run(True)
    torch.testing.assert_close(g_ckpt, g_plain)
    assert g_plain.abs().sum() > 0
    assert all(not v for v in rec.pooled.values())  # nothing recorded after take(), i.e. during the recompute


def test_recomputing_flag_is_scoped():
    assert not is_recomputing()
    with recomputing():
        assert is_recomputing()
        with recomputing():
            assert is_recomputing()
        assert is_recomputing()
    assert not is_recomputing()


def test_recorder_does_not_record_while_recomputing():
    rec = Recorder({"a": SiteSpec(3, channel_axis=-1)})
    rec.record("a", torch.ones(2, 3))
    with recomputing():
        rec.record("a", torch.zeros(2, 3))
    torch.testing.assert_close(rec.take()["a"], torch.ones(2, 3))
