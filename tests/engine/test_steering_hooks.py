"""Identity, strength 0, inverse and composition against the unhooked model; hooks detach cleanly."""

import pytest
import torch

from lineas_engine import (
    NoMatchingSiteError,
    SiteOutputError,
    SiteSpec,
    Steering,
    attach,
    find_sites,
    site_specs,
    steered,
)
from tests.engine.helpers import lm_forward, token_batch, unet_batch, unet_forward


def _random(steering: Steering, seed: int, scale: float = 0.3) -> Steering:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in steering.sites:
            d = steering.specs[s].dim
            steering.weight(s).copy_(1 + scale * torch.randn(d, generator=g))
            steering.bias(s).copy_(scale * torch.randn(d, generator=g))
    return steering


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def llama_case(tiny_llama):
    sites = find_sites(tiny_llama, preset="norms")
    return tiny_llama, site_specs(tiny_llama, sites), token_batch(4, 0, 128)


def _logits(model, batch):
    with torch.no_grad():
        return lm_forward(model)(batch).logits


def test_identity_and_strength_zero_are_bit_identical(llama_case):
    model, specs, batch = llama_case
    base = _logits(model, batch)
    with steered(model, Steering(specs)):
        assert torch.equal(_logits(model, batch), base)
    with steered(model, _random(Steering(specs), 0), strength=0.0):
        assert torch.equal(_logits(model, batch), base)
    assert torch.equal(_logits(model, batch), base)


def test_unet_identity_bit_identical(tiny_unet):
    specs = site_specs(tiny_unet, find_sites(tiny_unet, preset="norms"))
    batch = unet_batch(2, 0)
    with torch.no_grad():
        base = unet_forward(tiny_unet)(batch).sample
        with steered(tiny_unet, Steering(specs)):
            assert torch.equal(unet_forward(tiny_unet)(batch).sample, base)
        with steered(tiny_unet, _random(Steering(specs), 1)):
            assert not torch.allclose(unet_forward(tiny_unet)(batch).sample, base)


def test_steering_changes_output_and_detach_restores(llama_case):
    model, specs, batch = llama_case
    base = _logits(model, batch)
    handle = attach(model, _random(Steering(specs), 0))
    assert _hook_count(model) == len(specs)
    assert not torch.allclose(_logits(model, batch), base)
    handle.remove()
    assert _hook_count(model) == 0
    assert torch.equal(_logits(model, batch), base)


def test_no_hooks_left_after_exception(llama_case):
    model, specs, batch = llama_case
    with pytest.raises(RuntimeError, match="boom"):
        with steered(model, _random(Steering(specs), 0)):
            raise RuntimeError("boom")
    assert _hook_count(model) == 0
    bad = Steering({next(iter(specs)): SiteSpec(7)})  # wrong width -> error raised inside the forward
    with pytest.raises(SiteOutputError, match="7 channels"):
        with steered(model, bad):
            _logits(model, batch)
    assert _hook_count(model) == 0


def test_inverse_after_forward_is_identity(llama_case):
    model, specs, batch = llama_case
    s = _random(Steering(specs), 3)
    inv = s.inverse()
    h = torch.randn(2, 5, specs[s.sites[0]].dim)
    torch.testing.assert_close(inv.apply_to(s.sites[0], s.apply_to(s.sites[0], h)), h, atol=1e-6, rtol=0)
    base = _logits(model, batch)
    both = s.then(inv)
    with steered(model, both):
        torch.testing.assert_close(_logits(model, batch), base, atol=1e-5, rtol=0)


def test_composition_equals_sequential_application(llama_case):
    model, specs, batch = llama_case
    first = _random(Steering(specs), 4)
    names = list(specs)
    second = _random(Steering({k: specs[k] for k in names[1:4]}), 5)  # overlapping, partial site set
    with attach(model, first), attach(model, second):
        sequential = _logits(model, batch)
    with steered(model, first.then(second)):
        composed = _logits(model, batch)
    torch.testing.assert_close(composed, sequential, atol=1e-5, rtol=1e-5)


def test_strength_matches_at_strength(llama_case):
    model, specs, batch = llama_case
    s = _random(Steering(specs), 6)
    with steered(model, s, strength=0.4):
        a = _logits(model, batch)
    with steered(model, s.at_strength(0.4)):
        b = _logits(model, batch)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_channel_axis_one_for_conv_maps():
    s = _random(Steering({"x": SiteSpec(3, 1)}), 0)
    h = torch.randn(2, 3, 4, 5)
    expect = h * s.weight("x").view(1, 3, 1, 1) + s.bias("x").view(1, 3, 1, 1)
    torch.testing.assert_close(s.apply_to("x", h), expect)


def test_stats_and_support():
    s = Steering({"a": SiteSpec(4), "b": SiteSpec(4)})
    assert s.support() == 0.0
    with torch.no_grad():
        s.weight("a")[0] = 2.0
        s.bias("b")[1:3] = -1.0
    assert s.support() == pytest.approx(3 / 8)
    st = s.stats()
    assert st["a"]["support"] == 0.25 and st["a"]["max_abs_scale_dev"] == 1.0
    assert st["b"]["mean_abs_shift"] == 0.5
    assert s.num_parameters() == 16


def test_site_errors(tiny_llama):
    with pytest.raises(NoMatchingSiteError, match="matched no module.*model.layers"):
        find_sites(tiny_llama, pattern=r".*nonexistent.*")
    with pytest.raises(NoMatchingSiteError, match="not modules"):
        attach(tiny_llama, Steering({"model.nope": SiteSpec(32)}))
    with pytest.raises(SiteOutputError, match="not a tensor"):
        with steered(tiny_llama, Steering({"model.rotary_emb": SiteSpec(32)})):
            _logits(tiny_llama, token_batch(2, 0, 128))
    assert _hook_count(tiny_llama) == 0
