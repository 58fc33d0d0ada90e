"""End-to-end training on tiny real models: held-out loss, determinism, frozen weights, early stop,
micro-batching, errors, and end-to-end against the layer-wise baseline."""

import pytest
import torch

from lineas_engine import (
    LineasError,
    NonFiniteLossError,
    SiteSpec,
    Steering,
    TrainConfig,
    evaluate_loss,
    find_sites,
    fit,
    fit_layerwise,
    record_activations,
    site_specs,
    train,
)
from tests.engine.helpers import Chain, lm_forward, token_batch, unet_batch, unet_forward


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_llama_held_out_loss_halves(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt = token_batch(24, 0, 64, seed=1), token_batch(24, 64, 128, seed=2)
    held = token_batch(24, 0, 64, seed=3)
    steering = Steering(specs)
    cfg = TrainConfig(steps=60, lr=0.05, optimizer="adam", batch_size=24)
    res = fit(tiny_llama, steering, lm_forward(tiny_llama), src, tgt, config=cfg, eval_source=held)
    assert res.eval_after <= 0.5 * res.eval_before, (res.eval_before, res.eval_after)
    assert res.losses[-1] < res.losses[0]
    assert _hooks(tiny_llama) == 0
    assert all(p.requires_grad for p in tiny_llama.parameters())  # restored after training
    assert all(p.grad is None for p in tiny_llama.parameters())  # no weight gradients were computed


def test_unet_held_out_loss_halves_with_noise_level_groups(tiny_unet):
    specs = site_specs(tiny_unet, find_sites(tiny_unet, preset="norms"))

    def batch(n, seed, shift, scale):
        b = unet_batch(n, seed, shift, scale)
        b["timestep"] = torch.tensor([5, 500] * (n // 2))
        b["lineas_group"] = b["timestep"].clone()
        return b

    src, tgt, held = batch(16, 1, 0.0, 1.0), batch(16, 2, 1.0, 1.6), batch(16, 3, 0.0, 1.0)
    steering = Steering(specs)
    cfg = TrainConfig(steps=40, lr=0.02, optimizer="adam", batch_size=16)
    res = fit(tiny_unet, steering, unet_forward(tiny_unet), src, tgt, config=cfg, eval_source=held)
    assert res.eval_after <= 0.5 * res.eval_before, (res.eval_before, res.eval_after)
    assert torch.equal(res.target_groups, tgt["lineas_group"])  # the target's groups are kept with its activations


def test_deterministic_with_seed_and_cached_targets(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt = token_batch(12, 0, 64, seed=1), token_batch(12, 64, 128, seed=2)
    cfg = TrainConfig(steps=5, lr=0.1, batch_size=4, seed=7)
    a, b = Steering(specs), Steering(specs)
    ra = fit(tiny_llama, a, lm_forward(tiny_llama), src, tgt, config=cfg)
    rb = fit(tiny_llama, b, lm_forward(tiny_llama), src, config=cfg, target_acts=ra.target_acts)
    assert ra.losses == rb.losses
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_forward_stops_after_last_site(tiny_llama):
    specs = site_specs(tiny_llama, ["model.layers.0.post_attention_layernorm"])
    cached = res_acts(tiny_llama, specs)
    calls = {"layer2": 0, "head": 0}
    h1 = tiny_llama.model.layers[2].register_forward_hook(lambda *a: calls.__setitem__("layer2", calls["layer2"] + 1))
    h2 = tiny_llama.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    try:
        cfg = TrainConfig(steps=4, lr=0.1, batch_size=8)
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), token_batch(8, 0, 64), token_batch(8, 64, 128),
            config=cfg)
        # the first target batch runs whole to learn the firing order; nothing after it does
        assert calls == {"layer2": 1, "head": 1}
        res = fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), token_batch(8, 0, 64), config=cfg,
                  target_acts=cached, last_site="model.layers.0.post_attention_layernorm")
        assert calls == {"layer2": 1, "head": 1} and res.last_site == "model.layers.0.post_attention_layernorm"
    finally:
        h1.remove()
        h2.remove()


def res_acts(model, specs):
    return record_activations(model, specs, lm_forward(model), token_batch(8, 64, 128), stop_after_last=False)


def test_micro_batches_give_the_same_gradient(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt = token_batch(8, 0, 64, seed=1), token_batch(8, 64, 128, seed=2)
    out = []
    for micro in (None, 3):
        s = Steering(specs)
        cfg = TrainConfig(steps=3, lr=0.1, batch_size=8, micro_batch_size=micro, schedule="constant")
        r = fit(tiny_llama, s, lm_forward(tiny_llama), src, tgt, config=cfg)
        out.append((r.losses, s.state_dict()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    for k in out[0][1]:
        torch.testing.assert_close(out[0][1][k], out[1][1][k], atol=1e-6, rtol=1e-5)


def test_on_step_progress_and_interrupt_leave_model_clean(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    seen = []

    def on_step(step, loss):
        seen.append((step, loss))
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), token_batch(4, 0, 64), token_batch(4, 64, 128),
            config=TrainConfig(steps=10, batch_size=4), on_step=on_step)
    assert [s for s, _ in seen] == [1, 2, 3]
    assert _hooks(tiny_llama) == 0 and all(p.requires_grad for p in tiny_llama.parameters())


def test_non_finite_detected(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt = token_batch(4, 0, 64), token_batch(4, 64, 128)
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), src, tgt,
            config=TrainConfig(steps=30, lr=1e30, batch_size=4, schedule="constant"))
    cached = record_activations(tiny_llama, specs, lm_forward(tiny_llama), tgt)
    cached[next(iter(specs))][0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="target activations"):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), src, config=TrainConfig(steps=1), target_acts=cached)


def test_config_and_input_errors(tiny_llama):
    with pytest.raises(LineasError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(LineasError, match="lr=-1"):
        TrainConfig(lr=-1)
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    with pytest.raises(LineasError, match="at least 2 source"):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama), token_batch(1, 0, 64), token_batch(4, 0, 64))
    with pytest.raises(LineasError, match="disagree"):
        fit(tiny_llama, Steering(specs), lm_forward(tiny_llama),
            {"input_ids": torch.zeros(3, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
            token_batch(4, 0, 64))


def test_sparse_training_reduces_support(tiny_llama):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="norms"))
    src, tgt = token_batch(8, 0, 64, seed=1), token_batch(8, 64, 128, seed=2)
    dense, sparse = Steering(specs), Steering(specs)
    fit(tiny_llama, dense, lm_forward(tiny_llama), src, tgt, config=TrainConfig(steps=20, lr=0.05, batch_size=8))
    r = fit(tiny_llama, sparse, lm_forward(tiny_llama), src, tgt,
            config=TrainConfig(steps=20, lr=0.05, batch_size=8, gamma=0.05))
    assert dense.support() > 0.9
    assert r.support == sparse.support() < 0.5 * dense.support()


def test_end_to_end_beats_layerwise_when_upstream_shifts_downstream():
    torch.manual_seed(0)
    model = Chain(8).eval()
    specs = {"first": SiteSpec(8), "second": SiteSpec(8)}
    g = torch.Generator().manual_seed(1)
    src = {"x": torch.randn(64, 8, generator=g)}
    tgt = {"x": torch.randn(64, 8, generator=g) * 0.5 + 1.0}
    held = {"x": torch.randn(64, 8, generator=g)}
    fwd = lambda b: model(b["x"])  # noqa: E731
    lw = fit_layerwise(model, specs, fwd, src, tgt, mask_key=None)
    e2e = Steering(specs)
    cfg = TrainConfig(steps=300, lr=0.05, optimizer="adam", batch_size=64, mask_key=None)
    res = fit(model, e2e, fwd, src, tgt, config=cfg)
    tacts = res.target_acts
    loss_lw = evaluate_loss(model, lw, fwd, held, tacts, config=cfg)
    loss_e2e = evaluate_loss(model, e2e, fwd, held, tacts, config=cfg)
    loss_none = evaluate_loss(model, None, fwd, held, tacts, specs=specs, config=cfg)
    assert loss_e2e < 0.5 * loss_lw < loss_none, (loss_none, loss_lw, loss_e2e)


def test_layerwise_is_exact_for_affine_related_site():
    """With no upstream sites, the layer-wise affine OT fit recovers a known per-coordinate affine map."""
    model = torch.nn.Sequential(torch.nn.Identity()).eval()
    specs = {"0": SiteSpec(3)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    w, b = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, -2.0, 0.3])
    s = fit_layerwise(model, specs, lambda d: model(d["x"]), {"x": x}, {"x": x * w + b}, mask_key=None)
    torch.testing.assert_close(s.weight("0")[:2], w[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.bias("0")[:2], b[:2], atol=1e-5, rtol=1e-5)
    # a negative scale is not a transport map in 1-D: the fitted map stays increasing
    assert s.weight("0")[2].item() > 0


def test_early_stop_on_plateau():
    model = torch.nn.Sequential(torch.nn.Identity()).eval()
    specs = {"0": SiteSpec(2)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g)
    fwd = lambda d: model(d["x"])  # noqa: E731
    cfg = TrainConfig(steps=500, lr=0.1, optimizer="adam", batch_size=16, mask_key=None, patience=5, min_delta=1e-2)
    res = fit(model, Steering(specs), fwd, {"x": x}, {"x": x * 2 + 1}, config=cfg)
    assert res.steps == len(res.losses) < 500
    tail = res.losses[-6:]
    assert min(tail[1:]) >= min(res.losses[:-5]) * (1 - 1e-2)  # it stopped because nothing improved


def test_layerwise_with_recorded_activations_equals_recording_them():
    torch.manual_seed(0)
    model = Chain(8).eval()
    specs = {"first": SiteSpec(8), "second": SiteSpec(8)}
    g = torch.Generator().manual_seed(1)
    src, tgt = {"x": torch.randn(32, 8, generator=g)}, {"x": torch.randn(32, 8, generator=g) + 1.0}
    fwd = lambda b: model(b["x"])  # noqa: E731
    fresh = fit_layerwise(model, specs, fwd, src, tgt, mask_key=None)
    acts = {k: record_activations(model, specs, fwd, x, mask_key=None) for k, x in (("src", src), ("tgt", tgt))}
    given = fit_layerwise(model, specs, fwd, None, target_acts=acts["tgt"], source_acts=acts["src"])
    for s in specs:
        assert torch.equal(fresh.weight(s), given.weight(s)) and torch.equal(fresh.bias(s), given.bias(s))


@pytest.mark.parametrize("maps,frozen,identity", [("scale", "bias", 0.0), ("shift", "weight", 1.0)])
def test_maps_learns_one_half_of_the_map_and_holds_the_other_at_identity(tiny_llama, maps, frozen, identity):
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    src, tgt, held = token_batch(16, 0, 64, seed=1), token_batch(16, 64, 128, seed=2), token_batch(16, 0, 64, seed=3)
    steering = Steering(specs)
    res = fit(tiny_llama, steering, lm_forward(tiny_llama), src, tgt, eval_source=held,
              config=TrainConfig(steps=30, lr=0.05, optimizer="adam", batch_size=16, maps=maps, gamma=0.01))
    learned = "weight" if frozen == "bias" else "bias"
    for s in specs:
        assert torch.equal(getattr(steering, frozen)(s), torch.full_like(getattr(steering, frozen)(s), identity))
    moved = sum(int((getattr(steering, learned)(s) != (1.0 - identity)).sum()) for s in specs)
    assert moved > 0.9 * sum(p.dim for p in specs.values())
    assert res.eval_after < res.eval_before
    # the frozen half is frozen for the fit only: afterwards every parameter trains again, as before the fit
    assert all(p.requires_grad for p in steering.parameters())


def test_maps_must_be_known_and_layerwise_fits_affine_only(tiny_llama):
    with pytest.raises(LineasError, match="maps='scales' must be one of affine, scale, shift"):
        TrainConfig(maps="scales")
    specs = site_specs(tiny_llama, find_sites(tiny_llama, preset="post_norms"))
    with pytest.raises(LineasError, match="maps='scale' needs method 'lineas'"):
        train(tiny_llama, specs, lm_forward(tiny_llama), token_batch(4, 0, 64), token_batch(4, 64, 128),
              method="layerwise", config=TrainConfig(maps="scale"))
