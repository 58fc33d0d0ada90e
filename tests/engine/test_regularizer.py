"""The host's regularizer hook of ``fit`` / ``train``: its gradient reaches the steering (a term that pulls
the steered output back to the unsteered one keeps the map nearer the identity, in proportion to its weight),
it runs unsteered outside the ``steered()`` context it is given, and bad terms are refused by name."""

import pytest
import torch

from lineas_engine import (
    LineasError,
    NonFiniteLossError,
    Steering,
    TrainConfig,
    find_sites,
    fit,
    site_specs,
    train,
)
from tests.engine.helpers import lm_forward, token_batch

CFG = TrainConfig(steps=15, lr=0.05, optimizer="adam", batch_size=8)


def _data():
    return token_batch(8, 0, 64, seed=1), token_batch(8, 64, 128, seed=2), token_batch(6, 0, 128, seed=3)


def _drift_term(model, neutral, weight, seen=None):
    """weight x mean squared difference between the steered and unsteered logits on ``neutral`` (the random
    tiny model's logits are about 1e-2, so the weights that matter are large)."""

    def reg(step, steered):
        with torch.no_grad():
            base = model(**neutral).logits
        with steered():
            out = model(**neutral).logits
        if seen is not None:
            seen.append((step, (out - base).abs().max().item()))
        return weight * (out - base).pow(2).mean()

    return reg


def _distance(steering: Steering) -> float:
    return sum(((steering.weight(s) - 1).pow(2).sum() + steering.bias(s).pow(2).sum()).item() for s in steering.sites)


def test_the_regularizer_pulls_the_map_towards_the_identity(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt, neutral = _data()
    free, light, heavy = Steering(specs), Steering(specs), Steering(specs)
    r0 = fit(tiny_llama, free, lm_forward(tiny_llama), src, tgt, config=CFG)
    seen = []
    r1 = fit(tiny_llama, light, lm_forward(tiny_llama), src, tgt, config=CFG,
             regularizer=_drift_term(tiny_llama, neutral, 1e4, seen))
    r2 = fit(tiny_llama, heavy, lm_forward(tiny_llama), src, tgt, config=CFG,
             regularizer=_drift_term(tiny_llama, neutral, 1e6))
    assert r0.regularizer_values == [] and len(r1.regularizer_values) == CFG.steps
    assert r1.regularizer_values[0] == 0.0  # the identity: the steered and unsteered outputs agree exactly
    assert seen[0] == (1, 0.0) and seen[-1][1] > 0  # steered() attaches the map being trained, and only inside
    assert _distance(heavy) < 0.5 * _distance(light) < 0.5 * _distance(free), \
        (_distance(heavy), _distance(light), _distance(free))
    assert r2.losses[-1] > r0.losses[-1]  # the OT loss pays for it
    assert r1.summary()["regularizer_last"] == r1.regularizer_values[-1] and "regularizer_last" not in r0.summary()
    assert sum(len(m._forward_hooks) for m in tiny_llama.modules()) == 0


def test_train_passes_the_regularizer_and_the_layerwise_method_refuses_it(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt, neutral = _data()
    _, res = train(tiny_llama, specs, lm_forward(tiny_llama), src, tgt, config=CFG,
                   regularizer=_drift_term(tiny_llama, neutral, 1e4))
    assert len(res.regularizer_values) == CFG.steps
    with pytest.raises(LineasError, match="closed form and takes no regularizer"):
        train(tiny_llama, specs, lm_forward(tiny_llama), src, tgt, method="layerwise", config=CFG,
              regularizer=_drift_term(tiny_llama, neutral, 1.0))


@pytest.mark.parametrize("bad, error, match", [
    (lambda step, steered: torch.tensor(float("nan"), requires_grad=True), NonFiniteLossError,
     "regularizer became nan"),
    (lambda step, steered: torch.tensor(1.0), LineasError, "has no gradient"),
    (lambda step, steered: torch.ones(2, requires_grad=True), LineasError,
     r"scalar tensor, got Tensor of shape \(2,\)"),
    (lambda step, steered: 1.0, LineasError, "scalar tensor, got float"),
])
def test_bad_regularizers_are_refused_by_name(tiny_llama, bad, error, match):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt, _ = _data()
    with pytest.raises(error, match=match):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), src, tgt, config=CFG, regularizer=bad)
    assert sum(len(m._forward_hooks) for m in tiny_llama.modules()) == 0
    assert all(p.requires_grad for p in tiny_llama.parameters())
