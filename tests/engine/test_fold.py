"""Folding equals hooks (1e-5) where exact; what cannot be folded is reported, not approximated."""

import copy

import torch

from lineas_engine import SiteSpec, Steering, find_sites, fold_, folded_parameters, site_specs, steered
from tests.engine.helpers import lm_forward, token_batch, unet_batch, unet_forward


def _random(steering, seed, shift=True):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in steering.sites:
            d = steering.specs[s].dim
            steering.weight(s).copy_(1 + 0.3 * torch.randn(d, generator=g))
            if shift:
                steering.bias(s).copy_(0.3 * torch.randn(d, generator=g))
    return steering


def _check_fold_equals_hooks(model, steering, forward, batch, out, strength=1.0):
    with torch.no_grad(), steered(model, steering, strength):
        hooked = out(forward(model)(batch))
    folded_model = copy.deepcopy(model)
    report = fold_(folded_model, steering, strength)
    with torch.no_grad():
        folded = out(forward(folded_model)(batch))
    return hooked, folded, report


def test_layernorm_with_bias_folds_exactly(tiny_gpt2):
    s = _random(Steering(site_specs(tiny_gpt2, find_sites(tiny_gpt2, preset="norms"))), 0)
    batch = token_batch(3, 0, 128)
    for strength in (1.0, 0.5):
        hooked, folded, report = _check_fold_equals_hooks(tiny_gpt2, s, lm_forward, batch, lambda o: o.logits, strength)
        assert report.complete and len(report.folded) == 5
        torch.testing.assert_close(folded, hooked, atol=1e-5, rtol=1e-5)


def test_gemma_offset_norms_fold_scale_and_report_shift(tiny_gemma3):
    specs = site_specs(tiny_gemma3, find_sites(tiny_gemma3, preset="post_norms"))
    batch = token_batch(3, 0, 128)
    scale_only = _random(Steering(specs), 1, shift=False)
    hooked, folded, report = _check_fold_equals_hooks(tiny_gemma3, scale_only, lm_forward, batch, lambda o: o.logits)
    assert report.complete
    torch.testing.assert_close(folded, hooked, atol=1e-5, rtol=1e-5)
    with_shift = _random(Steering(specs), 2)
    params, report = folded_parameters(tiny_gemma3, with_shift)
    assert not params and len(report.skipped) == 4
    assert all("no bias" in r for r in report.skipped.values())


def test_llama_rmsnorm_scale_folds(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="norms"))
    s = _random(Steering(specs), 3, shift=False)
    hooked, folded, report = _check_fold_equals_hooks(tiny_llama, s, lm_forward, token_batch(3, 0, 128),
                                                      lambda o: o.logits)
    assert report.complete
    torch.testing.assert_close(folded, hooked, atol=1e-5, rtol=1e-5)


def test_unet_groupnorm_and_layernorm_fold(tiny_unet):
    s = _random(Steering(site_specs(tiny_unet, find_sites(tiny_unet, preset="norms"))), 4)
    hooked, folded, report = _check_fold_equals_hooks(tiny_unet, s, unet_forward, unet_batch(2, 0),
                                                      lambda o: o.sample)
    assert report.complete, report.skipped
    torch.testing.assert_close(folded, hooked, atol=1e-5, rtol=1e-5)


def test_linear_site_folds_and_norm_without_affine_is_skipped():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6, elementwise_affine=False)).eval()
    s = _random(Steering({"0": SiteSpec(6), "1": SiteSpec(6)}), 5)
    params, report = folded_parameters(model, s)
    assert report.folded == ["0"] and "no per-channel weight" in report.skipped["1"]
    x = torch.randn(3, 4)
    ref = model[0](x)
    new = torch.func.functional_call(model[0], {"weight": params["0.weight"], "bias": params["0.bias"]}, (x,))
    torch.testing.assert_close(new, s.apply_to("0", ref), atol=1e-5, rtol=1e-5)


def test_fold_does_not_touch_unfoldable_sites_and_nothing_without_fold_(tiny_gemma3):
    before = {k: v.clone() for k, v in tiny_gemma3.state_dict().items()}
    s = _random(Steering(site_specs(tiny_gemma3, find_sites(tiny_gemma3, preset="post_norms"))), 6)
    folded_parameters(tiny_gemma3, s)
    fold_(tiny_gemma3, s)  # every site has a shift and no bias: all skipped, nothing changes
    assert all(torch.equal(before[k], v) for k, v in tiny_gemma3.state_dict().items())
