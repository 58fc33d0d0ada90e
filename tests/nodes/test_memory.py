"""Training memory on a real ComfyUI model (the tiny SD1.5 checkpoint, loaded by ComfyUI's loader): no second
copy of the weights, per-block gradient checkpointing with the same gradient and one recording, the
micro-batch choice and the partially-loaded check."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfy


def _pack():
    import sys

    return next(m for k, m in sys.modules.items() if k.endswith("comfyui-lineas") and hasattr(m, "comfy_entrypoint"))


def _engine():
    """The engine as the pack imports it (its own module objects, as inside ComfyUI)."""
    import sys

    return sys.modules[_pack().__name__ + ".lineas_engine"]


@pytest.fixture(scope="module")
def tiny(comfy):
    import nodes

    with torch.inference_mode():
        return nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[0]


def _steering(dm, seed=0):
    eng = _engine()
    Steering, find_sites, site_specs = eng.Steering, eng.find_sites, eng.site_specs
    steering = Steering(site_specs(dm, find_sites(dm, preset="norms")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in steering.sites:
            steering.weight(s).add_(0.2 * torch.randn(steering.specs[s].dim, generator=g))
            steering.bias(s).add_(0.1 * torch.randn(steering.specs[s].dim, generator=g))
    return steering


def _forward(patcher, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 77, 768, generator=g)
    sigma = torch.full((n,), 3.0)
    return lambda _=None: patcher.model.apply_model(x, sigma, c_crossattn=ctx)


def _grads(patcher, steering):
    """One engine-style step: record pooled activations under hooks, remove the hooks, then backward."""
    Recorder, attach = _engine().Recorder, _engine().attach
    dm = patcher.get_model_object("diffusion_model")
    mem = _pack().nodes._memory
    steering.zero_grad(set_to_none=True)
    with mem.trainable_weights(dm), torch.inference_mode(False), torch.enable_grad():
        rec = Recorder(steering.specs)
        with mem.saved_bytes(mem.weight_storages(dm)) as saved:
            with attach(dm, steering, recorder=rec):
                _forward(patcher)()
        acts = rec.take()
        loss = sum((a - 0.5).square().mean() for a in acts.values())
        loss.backward()
        leftover = sum(len(v) for v in rec.pooled.values())
    grads = torch.cat([p.grad.flatten() for p in steering.parameters()])
    return grads, saved["bytes"], leftover, list(rec.order)


def test_checkpointing_same_gradient_one_recording_less_memory(tiny):
    mem = _pack().nodes._memory
    with torch.inference_mode(False):
        plain = tiny.clone()
        on_plain = mem.prepare_training(plain, "off")
        steering = _steering(plain.get_model_object("diffusion_model"))
        g_plain, bytes_plain, left_plain, order_plain = _grads(plain, steering)
        ckpt = tiny.clone()
        on_ckpt = mem.prepare_training(ckpt, "on")
        g_ckpt, bytes_ckpt, left_ckpt, order_ckpt = _grads(ckpt, steering)
    assert (on_plain, on_ckpt) == (False, True)
    assert len(mem.checkpoint_units(ckpt.get_model_object("diffusion_model"))) >= 8
    torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-5, atol=1e-6 * float(g_plain.abs().max()))
    assert g_plain.abs().sum() > 0
    assert left_plain == left_ckpt == 0 and order_ckpt == order_plain  # the recompute recorded nothing
    assert bytes_ckpt < 0.5 * bytes_plain, (bytes_ckpt, bytes_plain)
    # the shared model is back to its own forward once another clone loads
    import comfy.model_management as mm

    mm.load_models_gpu([tiny])
    dm = tiny.get_model_object("diffusion_model")
    assert all("forward" not in vars(dm.get_submodule(u)) or vars(dm.get_submodule(u))["forward"].__func__
               is type(dm.get_submodule(u)).forward for u in mem.checkpoint_units(dm))


def test_no_second_copy_of_the_weights(tiny):
    """What one forward saves for backward beyond the model's own weights, with the aliased weights of
    trainable_weights, equals what a model with ordinary (non-inference) weights saves: activations only,
    no copy of any weight. On any ComfyUI (v0.3.64 weight wrappers copied every weight; 0.33 casts differ)."""
    import copy

    mem = _pack().nodes._memory
    with torch.inference_mode(False):
        patcher = tiny.clone()
        mem.prepare_training(patcher, "off")
        dm = patcher.get_model_object("diffusion_model")
        originals = {n: p for n, p in dm.named_parameters()}
        weight_bytes = sum(p.numel() * p.element_size() for p in originals.values())
        steering = _steering(dm)
        _, aliased, _, _ = _grads(patcher, steering)
        assert all(p is originals[n] for n, p in dm.named_parameters())  # the inference tensors are back
        assert all(p.is_inference() for p in dm.parameters())
        plain_dm = copy.deepcopy(dm)  # ordinary tensors: a copy made outside inference mode
        with torch.no_grad():
            for p in plain_dm.parameters():
                p.data = p.data.clone()
        assert not any(p.is_inference() for p in plain_dm.parameters())
        plain_steering = _steering(plain_dm)
        g = torch.Generator().manual_seed(0)  # the inputs of _forward(patcher), through apply_model's steps
        x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 768, generator=g)
        sigma = torch.full((2,), 3.0)
        ms = patcher.get_model_object("model_sampling")
        with torch.enable_grad(), mem.saved_bytes(mem.weight_storages(plain_dm)) as saved:
            with _engine().attach(plain_dm, plain_steering):
                plain_dm(ms.calculate_input(sigma, x), ms.timestep(sigma).float(), context=ctx)
    assert aliased < 0.5 * weight_bytes, (aliased, weight_bytes)
    assert abs(aliased - saved["bytes"]) <= 0.25 * saved["bytes"], (aliased, saved["bytes"])


def test_micro_batch_from_free_memory():
    mem = _pack().nodes._memory
    gib = 2**30
    assert mem.choose_micro_batch(1 * gib, 100 * gib, 16) is None  # 16 GiB fits in 70 GiB
    assert mem.choose_micro_batch(2 * gib, 20 * gib, 16) == 7  # floor(0.7 * 20 / 2)
    with pytest.raises(Exception, match="one training sample needs 8.00 GiB"):
        mem.choose_micro_batch(8 * gib, 10 * gib, 16)


def test_auto_micro_batch_measures_one_sample(tiny):
    mem = _pack().nodes._memory
    with torch.inference_mode(False):
        patcher = tiny.clone()
        mem.prepare_training(patcher, "auto")
        dm = patcher.get_model_object("diffusion_model")
        steering = _steering(dm)
        fwd = _forward(patcher, n=1)
        with mem.trainable_weights(dm):
            with _engine().attach(dm, steering):
                one = mem.saved_bytes_per_sample(fwd, None, dm)
                two = mem.saved_bytes_per_sample(_forward(patcher, n=2), None, dm)
            samples = {"x": torch.zeros(4, 4, 8, 8)}
            assert mem.auto_micro_batch(dm, steering, lambda b: fwd(), samples, 4, patcher.load_device) is None
    assert 0 < one and 1.8 * one < two < 2.2 * one  # activations scale with the batch; weights not counted


def test_partially_loaded_model_trains_only_with_checkpointing(tiny):
    mem = _pack().nodes._memory
    with torch.inference_mode(False):
        patcher = tiny.clone()
        mem.prepare_training(patcher, "off")
    flag = patcher.model.model_lowvram
    patcher.model.model_lowvram = True  # what ComfyUI sets when it could not load every weight (CPU never does)
    try:
        with pytest.raises(Exception, match="only partially loaded .* gradient_checkpointing 'on' or 'auto'"):
            mem.check_loaded(patcher, checkpointing=False)
        mem.check_loaded(patcher, checkpointing=True)
    finally:
        patcher.model.model_lowvram = flag
    with pytest.raises(Exception, match="gradient_checkpointing must be one of"):
        mem.prepare_training(tiny.clone(), "sometimes")


def test_measured_bytes_per_sample_with_checkpointing(tiny):
    """The node's measurement: with checkpointing, block inputs + the largest block's recompute, well
    below what one sample keeps without it, and not below one block's share."""
    mem = _pack().nodes._memory
    per = {}
    with torch.inference_mode(False):
        for mode in ("off", "on"):
            patcher = tiny.clone()
            mem.prepare_training(patcher, mode)
            dm = patcher.get_model_object("diffusion_model")
            steering = _steering(dm)
            fwd = _forward(patcher, n=1)
            with mem.trainable_weights(dm):
                per[mode] = mem.training_bytes_per_sample(dm, steering, lambda b, f=fwd: f(), {"x": torch.zeros(2, 1)})
                if mode == "off":
                    with _engine().attach(dm, steering):
                        direct = mem.saved_bytes_per_sample(fwd, None, dm)
    assert per["off"] == direct
    units = len(mem.checkpoint_units(dm))
    assert per["off"] / units < per["on"] < 0.6 * per["off"], (per, units)
