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


def test_context_pass_steers_but_neither_records_nor_stops():
    from lineas_engine import StopForward, context_pass, is_context_pass

    net = Net(False).requires_grad_(False)
    sites = [f"blocks.{i}.1" for i in range(3)]
    steering = Steering({s: SiteSpec(6, channel_axis=-1) for s in sites})
    with torch.no_grad():
        steering.weight(sites[0]).mul_(0)  # the first site zeroes its output: steering visibly acts
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    rec = Recorder({sites[0]: steering.specs[sites[0]]})
    with attach(net, steering, recorder=rec, stop_after=sites[0]):
        with context_pass():
            assert is_context_pass()
            out = net(x)  # past the stop site, nothing recorded
        assert not is_context_pass()
        assert all(not v for v in rec.pooled.values())
        try:
            net(x)
            raise AssertionError("the stop site did not stop a normal pass")
        except StopForward:
            pass
    with torch.no_grad(), attach(net, steering):
        torch.testing.assert_close(out, net(x))  # the context pass was steered like a plain steered pass
    torch.testing.assert_close(rec.take()[sites[0]], torch.zeros(4, 6))  # the normal pass recorded
