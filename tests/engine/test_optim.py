import math

import numpy as np
import pytest
import torch

from lineas_engine import SiteSpec, Steering, cosine_schedule, make_optimizer, prox_sparse_group_lasso_


def _closed_form(dw: np.ndarray, b: np.ndarray, t1: float, tg: float):
    """Sparse-group-lasso prox written out independently in numpy."""
    st = lambda v: np.sign(v) * np.maximum(np.abs(v) - t1, 0)  # noqa: E731
    v = np.concatenate([st(dw), st(b)])
    norm = np.sqrt((v**2).sum())
    v = v * max(0.0, 1 - tg / norm) if norm > 0 else v * 0
    return 1 + v[: len(dw)], v[len(dw):]


def _random_steering(seed=0):
    s = Steering({"a": SiteSpec(6), "b.c": SiteSpec(4, 1)})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for site in s.sites:
            s.weight(site).add_(torch.randn(s.specs[site].dim, generator=g) * 0.3)
            s.bias(site).add_(torch.randn(s.specs[site].dim, generator=g) * 0.3)
    return s


@pytest.mark.parametrize("tau,gamma,l1,group", [(0.1, 0.5, 1.0, 1.0), (0.05, 1.0, 0.0, 1.0), (0.2, 0.4, 1.0, 0.0),
                                               (1.0, 1.0, 1.0, 1.0)])
def test_prox_matches_closed_form(tau, gamma, l1, group):
    s = _random_steering()
    before = {k: (s.weight(k).detach().numpy().copy(), s.bias(k).detach().numpy().copy()) for k in s.sites}
    prox_sparse_group_lasso_(s, tau, gamma, l1, group)
    for k, (w, b) in before.items():
        d = s.specs[k].dim
        ew, eb = _closed_form(w - 1, b, tau * gamma * l1, tau * gamma * group * math.sqrt(d))
        np.testing.assert_allclose(s.weight(k).detach().numpy(), ew, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.bias(k).detach().numpy(), eb, rtol=1e-6, atol=1e-7)


def test_prox_creates_exact_identity_coordinates_and_big_group_kills_site():
    s = _random_steering()
    prox_sparse_group_lasso_(s, 1.0, 0.2, 1.0, 0.0)
    assert 0 < s.support() < 1
    prox_sparse_group_lasso_(s, 1.0, 100.0, 0.0, 1.0)
    assert s.support() == 0.0
    assert all(torch.equal(s.weight(k), torch.ones_like(s.weight(k))) for k in s.sites)


def test_prox_noop_when_gamma_zero():
    s = _random_steering()
    ref = {k: v.clone() for k, v in s.state_dict().items()}
    prox_sparse_group_lasso_(s, 0.1, 0.0)
    assert all(torch.equal(ref[k], v) for k, v in s.state_dict().items())


def test_cosine_schedule_and_optimizers():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = make_optimizer(p, "sgd", 0.1)
    sched = cosine_schedule(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert isinstance(make_optimizer(p, "adamw", 1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(p, "lbfgs")


def test_cosine_schedule_warmup_and_floor_closed_form():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule(opt, 12, warmup=2, floor=0.1)
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[12] == pytest.approx(0.1)
