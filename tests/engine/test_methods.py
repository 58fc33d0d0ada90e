"""The method layer: one entry point `train` for every registered method, the same figures for each, and
exactly what the underlying fits give."""

import pytest
import torch

from lineas_engine import (
    METHODS,
    LineasError,
    NoMatchingSiteError,
    SiteOutputError,
    SiteSpec,
    Steering,
    TrainConfig,
    evaluate_loss,
    find_sites,
    fit,
    fit_layerwise,
    get_method,
    register_method,
    site_specs,
    train,
)
from tests.engine.helpers import lm_forward, token_batch


def _data(model):
    specs = site_specs(model, find_sites(model, preset="post_norms"))
    return specs, token_batch(8, 0, 64, seed=1), token_batch(8, 64, 128, seed=2)


def test_lineas_through_train_is_fit_exactly(tiny_llama):
    specs, src, tgt = _data(tiny_llama)
    cfg = TrainConfig(steps=4, lr=0.1, batch_size=4, seed=3)
    steering, res = train(tiny_llama, specs, lm_forward(tiny_llama), src, tgt, config=cfg)
    direct = Steering(specs)
    ref = fit(tiny_llama, direct, lm_forward(tiny_llama), src, tgt, config=cfg, eval_source=src)
    assert res.method == "lineas" and res.losses == ref.losses and res.steps == 4
    assert all(torch.equal(a, b) for a, b in zip(steering.state_dict().values(), direct.state_dict().values()))
    assert res.eval_before == ref.eval_before and res.eval_after == ref.eval_after < res.eval_before
    assert res.seconds > 0 and 0 < res.support <= 1


def test_layer_wise_through_train_reports_the_same_figures(tiny_llama):
    specs, src, tgt = _data(tiny_llama)
    fwd = lm_forward(tiny_llama)
    cfg = TrainConfig()
    steering, res = train(tiny_llama, specs, fwd, src, tgt, method="layerwise", config=cfg)  # the alias
    direct = fit_layerwise(tiny_llama, specs, fwd, src, tgt)
    assert res.method == "layer-wise" and res.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(steering.state_dict().values(), direct.state_dict().values()))
    tacts = res.target_acts
    assert res.eval_before == pytest.approx(evaluate_loss(tiny_llama, None, fwd, src, tacts, specs=specs), rel=1e-6)
    assert res.eval_after == pytest.approx(evaluate_loss(tiny_llama, steering, fwd, src, tacts), rel=1e-6)
    assert res.eval_after < res.eval_before and res.losses == [res.eval_before, res.eval_after]


def test_registry_names_and_errors():
    assert {"lineas", "layer-wise"} <= set(METHODS)
    assert get_method("layerwise") is METHODS["layer-wise"] and not METHODS["layer-wise"].iterative
    with pytest.raises(LineasError, match="unknown method 'nope'.*lineas"):
        get_method("nope")
    with pytest.raises(LineasError, match="already registered"):
        register_method("lineas", lambda *a, **k: None, description="again")
    with pytest.raises(LineasError, match="lower case"):
        register_method("My Method", lambda *a, **k: None, description="bad name")


def test_a_registered_method_is_trained_through_the_same_entry_point(tiny_llama):
    specs, src, tgt = _data(tiny_llama)

    def shift_only(root, specs, forward, source, target, *, config, on_step, eval_source, device):
        s, r = METHODS["layer-wise"].fn(root, specs, forward, source, target, config=config, on_step=on_step,
                                        eval_source=eval_source, device=device)
        with torch.no_grad():
            for site in s.sites:
                s.weight(site).fill_(1.0)
        return s, r

    register_method("test-shift-only", shift_only, description="test", iterative=False)
    try:
        steering, res = train(tiny_llama, specs, lm_forward(tiny_llama), src, tgt, method="test-shift-only")
        assert res.method == "test-shift-only" and all(torch.all(steering.weight(s) == 1) for s in steering.sites)
    finally:
        del METHODS["test-shift-only"]


def test_from_tensors_and_subset():
    specs = {"a": SiteSpec(2), "b": SiteSpec(3, 1)}
    s = Steering.from_tensors(specs, {"a": torch.tensor([2.0, 3.0]), "b": torch.ones(3)},
                              {"a": torch.zeros(2), "b": torch.tensor([1.0, 0.0, -1.0])})
    sub = s.subset(["b"])
    assert sub.sites == ["b"] and torch.equal(sub.bias("b"), torch.tensor([1.0, 0.0, -1.0]))
    assert torch.equal(s.weight("a"), torch.tensor([2.0, 3.0]))
    with pytest.raises(SiteOutputError, match="scale of site 'a' has shape"):
        Steering.from_tensors(specs, {"a": torch.ones(3), "b": torch.ones(3)},
                              {"a": torch.zeros(2), "b": torch.zeros(3)})
    with pytest.raises(LineasError, match="not in this steering"):
        s.subset(["c"])


def test_every_engine_error_is_a_lineas_error(tiny_llama):
    with pytest.raises(NoMatchingSiteError, match="exclude pattern"):
        find_sites(tiny_llama, preset="norms", exclude="(")
    with pytest.raises(LineasError, match="SiteSpec.dim"):
        SiteSpec(0)
    from lineas_engine import make_optimizer, ot_loss
    with pytest.raises(LineasError, match="lack sites"):
        ot_loss({"a": torch.zeros(2, 1)}, {})
    with pytest.raises(LineasError, match="optimizer"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "lbfgs")
