"""bench/diffusion's DiT variant (the QK-norm measurement of docs/families.md) against a real ComfyUI: the 16-channel
VAE's scaling is Flux's latent format as ComfyUI applies it, the DiT file loads through UNETLoader's function
as FluxSchnell and ComfyUI's flow parametrisation is the one trained, and the recipe + benchmark run end to
end through the nodes with both site presets."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfy


def test_flux_latent_format_matches_comfyui(comfy):
    import comfy.sd
    from comfy.latent_formats import Flux

    from bench.diffusion.vae import FLUX, build_taesd, calibrate_, encode_raw, to_images, to_latents

    fmt = Flux()
    assert (FLUX.channels, FLUX.scale, FLUX.shift) == (fmt.latent_channels, fmt.scale_factor, fmt.shift_factor)
    ours = build_taesd(0, 16)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    raw = encode_raw(ours, x)
    calibrate_(ours, raw, FLUX)
    vae = comfy.sd.VAE(sd={k: v.clone() for k, v in ours.state_dict().items()})
    assert vae.latent_channels == 16
    with torch.inference_mode():
        lat = to_latents(ours, x, fmt=FLUX)
        torch.testing.assert_close(fmt.process_in(vae.encode(x.permute(0, 2, 3, 1))), lat, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.decode(fmt.process_out(lat)), to_images(ours, lat, fmt=FLUX).permute(0, 2, 3, 1),
                                   atol=1e-4, rtol=1e-4)
    std = (raw - raw.mean()) / raw.std()
    torch.testing.assert_close(lat, std, atol=1e-4, rtol=1e-4)  # what the DiT sees: standardised


def test_dit_file_loads_as_flux_schnell_with_the_trained_parametrisation(comfy, tmp_path):
    """Written with Flux's key names, loaded by UNETLoader's function: ComfyUI detects FluxSchnell, and its
    denoised output is x_t - s * model(x_t, s): the velocity the trainer regresses on (noise - x0)."""
    from safetensors.torch import save_file

    from bench.diffusion.dit import DiTConfig, _copy_norm_inputs, _loss, build_dit, zero_text
    from bench.diffusion.steer_dit import load_model

    cfg = DiTConfig(hidden=128, depth=1, single=1, tokens=4)
    dm = build_dit(cfg, 0)
    with torch.no_grad():  # away from the zero init, so the comparison means something
        for p in dm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    # the training forward and backward run (Flux's in-place residual updates need the norm-input copies)
    handles = _copy_norm_inputs(dm)
    x0, noise = torch.randn(3, 16, 8, 8), torch.randn(3, 16, 8, 8)
    _loss(dm, x0, torch.tensor([0.1, 0.5, 0.9]), noise, cfg.tokens).backward()
    assert all(p.grad is not None for p in dm.parameters() if p.requires_grad)
    for h in handles:
        h.remove()
    path = tmp_path / "dit.safetensors"
    save_file({k: v.detach().contiguous() for k, v in dm.state_dict().items()}, str(path))
    lf = load_model(path, cfg)
    assert type(lf.model.model.model_config).__name__ == "FluxSchnell"
    assert set(lf.overridden) <= {"hidden_size", "num_heads"}  # what Flux's detection hard-codes
    s = torch.tensor([0.2, 0.6, 0.95])
    xt = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
    ctx, y = zero_text(3, cfg.tokens)
    with torch.no_grad():
        v = dm(xt, s, ctx, y=y)
    with torch.inference_mode():
        denoised = lf.model.model.apply_model(xt, s, c_crossattn=ctx, y=y)
    torch.testing.assert_close(denoised, xt - s.view(-1, 1, 1, 1) * v, atol=1e-4, rtol=1e-4)


def test_dit_recipe_and_qk_benchmark_run_through_the_nodes(comfy, tmp_path, styles_root):
    from bench.diffusion.dit import DiTConfig
    from bench.diffusion.dit_recipe import FILES, DiTRecipeConfig, run
    from bench.diffusion.steer_dit import PRESETS, config_from_recipe
    from bench.diffusion.steer_dit import run as bench
    from bench.diffusion.vae import VAEConfig

    cfg = DiTRecipeConfig(styles=str(styles_root), limit_per_class=6, latent_crops=0,
                          vae=VAEConfig(steps=2, batch=4, log_every=1),
                          dit=DiTConfig(hidden=128, depth=1, single=1, tokens=4, steps=2, batch=4, log_every=1))
    report = run(cfg, tmp_path / "dit")
    for name in FILES.values():
        assert (tmp_path / "dit" / name).is_file(), name
    assert report["stages"]["dit"]["steps"] == 2 and report["stages"]["latents"]["n_train"] > 0
    bcfg = config_from_recipe(tmp_path / "dit", source_n=4, target_n=6, eval_n=3, strengths=(0.0, 1.0),
                              sample_steps=2, train_steps=2, learning_rate=0.05, batch_size=8, noise_levels=2)
    assert bcfg.dit["tokens"] == 4
    res = bench(bcfg, tmp_path / "bench", host=comfy)
    plain, qk = (res["presets"][p] for p in PRESETS)
    assert plain["qk_sites"] == 0 and qk["qk_sites"] > 0 and qk["sites"] == plain["sites"] + qk["qk_sites"]
    for r in (plain, qk):
        zero, one = r["curve"]
        assert zero["ssim_mean"] == pytest.approx(1.0) and one["ssim_mean"] < 1.0
    assert set(res["comparison"]) == set(PRESETS)
    assert (tmp_path / "bench" / "results.json").is_file()
