"""Fold computed from the base weights whatever clone is live, fold composed with a LoRA on the same norms,
the fold report, and sampling hooks that cast the steering once, through ComfyUI's own KSampler."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfy

SITE = "input_blocks.1.0.in_layers.0"  # a GroupNorm with an affine in the tiny SD1.5 UNet


def _pack():
    import sys

    return next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))


@pytest.fixture(scope="module")
def tiny(comfy):
    import nodes

    with torch.inference_mode():
        model, clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:3]
        pos = nodes.CLIPTextEncode().encode(clip, "a picture")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    return model, pos, neg


def _ref(model, sites=None, scale=None, seed=0, extra_sites=()):
    from lineas_engine import Steering, find_sites, site_specs

    pack = _pack()
    dm = model.get_model_object("diffusion_model")
    sites = list(sites or find_sites(dm, preset="norms")) + list(extra_sites)
    steering = Steering(site_specs(dm, sites))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in steering.sites:
            d = steering.specs[s].dim
            w = torch.full((d,), scale) if scale is not None else 1 + 0.2 * torch.randn(d, generator=g)
            steering.weight(s).copy_(w)
            steering.bias(s).copy_(torch.zeros(d) if scale is not None else 0.1 * torch.randn(d, generator=g))
    return pack.lineas_engine.SteeringRecord(steering, fingerprint={"architecture": "SD15"}, name="t")


def _sample(model, pos, neg, steps=2, seed=3):
    import nodes

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"].clone()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _apply(model, ref, strength, mode):
    return _pack().nodes.apply.LineasApply.execute(model, ref, strength, 0.0, 1.0, False, mode).result


def test_fold_strength_one_then_half_is_x1_5_not_x2(tiny):
    """The second fold is computed from the base weights, not from those the first one left applied."""
    model, pos, neg = tiny
    dm = model.get_model_object("diffusion_model")
    base_w = dm.get_parameter(f"{SITE}.weight").detach().clone()
    ref = _ref(model, sites=[SITE], scale=2.0)  # w = 2 at one site, b = 0
    base = _sample(model, pos, neg)

    _sample(_apply(model, ref, 1.0, "fold")[0], pos, neg)
    live = dm.get_parameter(f"{SITE}.weight").detach()
    torch.testing.assert_close(live, 2.0 * base_w)  # ComfyUI left the strength-1 fold applied in place

    half = _apply(model, ref, 0.5, "fold")[0]
    folded = _sample(half, pos, neg)
    torch.testing.assert_close(dm.get_parameter(f"{SITE}.weight").detach(), 1.5 * base_w)
    hooked = _sample(_apply(model, ref, 0.5, "hooks")[0], pos, neg)
    assert _rel(folded, hooked) <= 1e-5
    assert torch.equal(_sample(model, pos, neg), base)  # the plain model is x1.0 again


def test_fold_composes_with_a_lora_on_the_same_norms(tiny):
    model, pos, neg = tiny
    dm = model.get_model_object("diffusion_model")
    ref = _ref(model, seed=1)
    g = torch.Generator().manual_seed(7)
    lora = model.clone()
    diffs = {}
    for site in ref.steering.sites:
        for kind in ("weight", "bias"):
            p = dm.get_parameter(f"{site}.{kind}")
            diffs[f"diffusion_model.{site}.{kind}"] = ("diff", (0.3 * torch.randn(p.shape, generator=g),))
    assert len(lora.add_patches(diffs, 1.0)) == 2 * len(ref.steering.sites)
    plain_lora = _sample(lora, pos, neg)
    hooked = _sample(_apply(lora, ref, 0.8, "hooks")[0], pos, neg)
    folded = _sample(_apply(lora, ref, 0.8, "fold")[0], pos, neg)
    assert _rel(hooked, plain_lora) > 1e-3  # the steering acts on top of the LoRA
    assert _rel(folded, hooked) <= 1e-5


def test_fold_reports_the_sites_it_kept_as_hooks(tiny):
    model, pos, neg = tiny
    attn_q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"  # a Linear without bias: a shift cannot fold
    ref = _ref(model, seed=2, extra_sites=[attn_q])
    folded_model, report = _apply(model, ref, 1.0, "fold")
    assert "27 of 28 sites folded" in report and "1 kept as hooks" in report and attn_q in report
    assert "no bias" in report
    hooked = _sample(_apply(model, ref, 1.0, "hooks")[0], pos, neg)
    assert _rel(_sample(folded_model, pos, neg), hooked) <= 1e-5  # the kept site still acts, by hooks
    assert "27 of 27 sites folded" in _apply(model, _ref(model, seed=2), 1.0, "fold")[1]


def test_hooks_cast_the_steering_once_not_per_site_per_call(tiny):
    """A float64 steering on the fp32 model: count 1-D dtype conversions during sampling (4 model calls),
    hooked minus unsteered. Casting per site per call would add 2 x 27 x 4."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.to, torch.ops.aten._to_copy) and args[0].dim() == 1:
                self.n += int(out.data_ptr() != args[0].data_ptr())  # a real copy, not a no-op .to
            return out

    model, pos, neg = tiny
    ref = _ref(model, seed=3)
    ref.steering.double()
    counts = {}
    for name, m in (("none", model), ("first", _apply(model, ref, 1.0, "hooks")[0])):
        _sample(m, pos, neg, steps=1)  # loads the model
        with Count() as c:
            _sample(m, pos, neg, steps=4)
        counts[name] = c.n
    again = _apply(model, ref, 1.0, "hooks")[0]
    with Count() as c:
        _sample(again, pos, neg, steps=4)
        counts["again"] = c.n
        _sample(again, pos, neg, steps=4)
    counts["again twice"] = c.n
    sites = len(ref.steering.sites)
    assert counts["first"] == counts["none"], counts  # cast at the first call (during warm-up), reused after
    assert counts["again"] - counts["none"] == 2 * sites, counts  # w and b once per site, at the first call
    assert counts["again twice"] - 2 * counts["none"] == 2 * sites, counts


def test_hooks_act_only_inside_their_start_end_range(tiny):
    """One euler step calls the model once, at the schedule's first sigma (0 %): a steering for 50-100 %
    leaves that sample bit-identical to the unsteered one; for 0-50 % it acts exactly as the whole range."""
    model, pos, neg = tiny
    ref = _ref(model)
    apply = _pack().nodes.apply.LineasApply.execute
    base = _sample(model, pos, neg, steps=1)
    late = _sample(apply(model, ref, 1.0, 0.5, 1.0, False, "hooks").result[0], pos, neg, steps=1)
    early = _sample(apply(model, ref, 1.0, 0.0, 0.5, False, "hooks").result[0], pos, neg, steps=1)
    whole = _sample(apply(model, ref, 1.0, 0.0, 1.0, False, "hooks").result[0], pos, neg, steps=1)
    assert torch.equal(late, base)
    assert _rel(whole, base) > 1e-3 and torch.equal(early, whole)
