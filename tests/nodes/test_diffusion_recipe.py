"""bench/diffusion: the recipe with tiny step counts, checked against a real ComfyUI (the checkpoint loads
through CheckpointLoaderSimple, samples decode to 64x64, the VAE scaling and the noise schedule agree with
ComfyUI's), the name-pair split on the real file names, and the judge on synthetic images."""

from __future__ import annotations

import pytest
import torch

from bench.diffusion import judge as judge_mod
from bench.diffusion.data import group_of, list_items, split_items


def _tiny_config(styles):
    from bench.diffusion.recipe import RecipeConfig
    from bench.diffusion.unet import UNetConfig
    from bench.diffusion.vae import VAEConfig

    return RecipeConfig(styles=str(styles), limit_per_class=6, latent_crops=0,
                        vae=VAEConfig(steps=2, batch=4, log_every=1),
                        unet=UNetConfig(steps=2, batch=4, log_every=1))


@pytest.fixture(scope="module")
def tiny_run(comfy, tmp_path_factory, styles_root):
    """The recipe with 2 VAE and 2 UNet steps on 6 images per class (comfy: ComfyUI importable in-process),
    on the made-up style images of the styles_root fixture."""
    from bench.diffusion.recipe import run

    out = tmp_path_factory.mktemp("diffusion")
    return out, run(_tiny_config(styles_root), out)


@pytest.mark.comfy
def test_recipe_writes_checkpoint_judge_report_and_reuses_cache(tiny_run, styles_root):
    from bench.diffusion.recipe import FILES, run

    out, report = tiny_run
    for name in FILES.values():
        assert (out / name).is_file(), name
    st = report["stages"]
    assert st["vae"]["steps"] == 2 and st["unet"]["steps"] == 2 and not st["unet"]["cached"]
    assert st["vae"]["s_per_step"] > 0 and st["unet"]["s_per_step"] > 0
    assert {"test_roundtrip", "test_original"} <= set(st["judge"])
    again = run(_tiny_config(styles_root), out)
    assert all(s["cached"] for s in again["stages"].values())


@pytest.mark.comfy
def test_recipe_is_deterministic_per_seed(tiny_run, tmp_path, styles_root):
    from bench.diffusion import checkpoint
    from bench.diffusion.recipe import FILES, run

    out, _ = tiny_run
    run(_tiny_config(styles_root), tmp_path)
    for stage in ("vae", "latents", "unet", "judge", "checkpoint"):  # tensors (the metadata holds timings)
        a, b = checkpoint.load_tensors(tmp_path / FILES[stage]), checkpoint.load_tensors(out / FILES[stage])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
        assert checkpoint.read_meta(tmp_path / FILES[stage])["key"] == checkpoint.read_meta(out / FILES[stage])["key"]


def _load(comfy, ckpt):
    """(MODEL, CLIP, VAE) from ComfyUI's ordinary CheckpointLoaderSimple (call under inference_mode)."""
    import nodes
    from bench.diffusion.sample import link_checkpoint

    return nodes.CheckpointLoaderSimple().load_checkpoint(link_checkpoint(comfy, ckpt))[:3]


@pytest.mark.comfy
def test_checkpoint_loads_in_comfyui_and_samples_decode_to_64px(comfy, tiny_run):
    import nodes
    from bench.diffusion.recipe import FILES
    from bench.diffusion.sample import generate

    out, _ = tiny_run
    images = generate(out / FILES["checkpoint"], n=2, seed=3, steps=3, comfy=comfy)
    assert images.shape == (2, 64, 64, 3) and images.dtype.name == "uint8"
    with torch.inference_mode():
        model, clip, vae = _load(comfy, out / FILES["checkpoint"])
        cond = nodes.CLIPTextEncode().encode(clip, "a watercolour of a cat")[0]
    assert type(model.model).__name__ == "BaseModel" and type(model.model.model_config).__name__ == "SD15"
    assert type(vae.first_stage_model).__name__ == "TAESD"
    assert cond[0][0].shape == (1, 77, 768) and not cond[0][0].any()  # every prompt encodes to zeros


@pytest.mark.comfy
def test_latent_scaling_and_schedule_match_comfyui(comfy, tiny_run):
    from comfy.latent_formats import SD15

    from bench.diffusion import checkpoint
    from bench.diffusion.recipe import FILES
    from bench.diffusion.unet import alphas_cumprod, build_unet, zero_context
    from bench.diffusion.vae import SD15_SCALE, build_taesd, to_images, to_latents

    out, _ = tiny_run
    assert SD15_SCALE == SD15().scale_factor
    ours = build_taesd(0)
    ours.load_state_dict(checkpoint.load_tensors(out / FILES["vae"]))
    unet = build_unet(_tiny_config(".").unet, 0)
    unet.load_state_dict(checkpoint.load_tensors(out / FILES["unet"]))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model, _, vae = _load(comfy, out / FILES["checkpoint"])
        lat = to_latents(ours, x)
        torch.testing.assert_close(vae.encode(x.permute(0, 2, 3, 1)) * SD15_SCALE, lat, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(vae.decode(lat / SD15_SCALE), to_images(ours, lat).permute(0, 2, 3, 1),
                                   atol=1e-4, rtol=1e-4)
        abar = alphas_cumprod()
        torch.testing.assert_close(model.model.model_sampling.sigmas.double(), ((1 - abar) / abar).sqrt(),
                                   atol=1e-5, rtol=1e-5)
        # the checkpoint's UNet is ours, and ComfyUI's eps parameterisation is the one trained
        t = torch.tensor([10, 500, 990])
        a = abar[t].float().view(-1, 1, 1, 1)
        x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = unet(xt, timesteps=t.float(), context=zero_context(3))
        sigma = ((1 - a) / a).sqrt().flatten()
        x_in = xt / a.sqrt()
        denoised = model.model.apply_model(x_in, sigma, c_crossattn=zero_context(3))
        torch.testing.assert_close((x_in - denoised) / sigma.view(-1, 1, 1, 1), eps, atol=2e-3, rtol=2e-3)


def test_split_keeps_name_pairs_together_and_is_deterministic(styles_root):
    items = list_items(styles_root)
    train, test = split_items(items, 0.25, seed=0)
    assert len(train) + len(test) == len(items)
    assert not {group_of(i.path.name) for i in train} & {group_of(i.path.name) for i in test}
    for label in (0, 1):
        n = sum(i.label == label for i in items)
        assert 0.15 * n <= sum(i.label == label for i in test) <= 0.25 * n + 1
    assert split_items(items, 0.25, seed=0) == (train, test)
    assert split_items(items, 0.25, seed=1) != (train, test)
    assert group_of("api_bria_eraser-2.webp") == "api_bria_eraser" and group_of("a-b.webp") == "a-b"


def _synthetic(n: int, illustration: bool, gen: torch.Generator) -> torch.Tensor:
    """Illustration-like: a few flat saturated rectangles with hard edges; photo-like: smooth low-
    saturation gradients with sensor-like noise."""
    out = []
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    for _ in range(n):
        if illustration:
            im = torch.ones(3, 64, 64) * torch.rand(3, 1, 1, generator=gen)
            for _ in range(4):
                x0, y0 = torch.randint(0, 48, (2,), generator=gen).tolist()
                col = torch.zeros(3)
                col[torch.randint(0, 3, (1,), generator=gen)] = 1.0
                im[:, y0:y0 + 16, x0:x0 + 16] = col.view(3, 1, 1)
        else:
            base = 0.3 + 0.4 * torch.rand(1, generator=gen)
            tint = 0.05 * torch.randn(3, 1, 1, generator=gen)
            im = base + tint + 0.2 * (xx * torch.rand(1, generator=gen) + yy * torch.rand(1, generator=gen))
            im = im + 0.04 * torch.randn(3, 64, 64, generator=gen)
        out.append(im.clamp(0, 1))
    return torch.stack(out)


def test_judge_separates_synthetic_styles_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([_synthetic(20, False, gen), _synthetic(20, True, gen)])
    y = torch.tensor([0] * 20 + [1] * 20)
    feats = judge_mod.features(x)
    assert feats.shape == (40, len(judge_mod.FEATURES)) and torch.isfinite(feats).all()
    j = judge_mod.fit(x, y)
    x_test = torch.cat([_synthetic(8, False, gen), _synthetic(8, True, gen)])
    y_test = torch.tensor([0] * 8 + [1] * 8)
    assert j.accuracy(x_test, y_test)["accuracy"] == 1.0
    p = j.prob_illustration(x_test)
    assert p[:8].max() < 0.5 < p[8:].min()
    path = j.save(tmp_path / "judge.safetensors", {"note": "test"})
    assert torch.equal(judge_mod.Judge.load(path).prob_illustration(x_test), p)
    assert b"pickle" not in path.read_bytes()[:200]


@pytest.mark.comfy
def test_steer_bench_runs_both_methods_through_the_nodes(comfy, tiny_run, tmp_path, styles_root):
    """The benchmark end to end on the tiny recipe's model: both methods train through LineasTrainStyle,
    strength 0 is the same unsteered images for both (SSIM 1), strength 1 changes them."""
    import json

    from bench.diffusion.recipe import FILES
    from bench.diffusion.steer_bench import BenchConfig, run

    out, _ = tiny_run
    cfg = BenchConfig(ckpt=str(out / FILES["checkpoint"]), judge=str(out / FILES["judge"]), styles=str(styles_root),
                      source_n=4, target_n=30, eval_n=4, strengths=(0.0, 1.0), sample_steps=2, train_steps=2,
                      learning_rate=0.05, batch_size=8, noise_levels=2)
    res = run(cfg, tmp_path / "bench", comfy=comfy)
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["comparison"] == res["comparison"]
    assert len(res["target_images"]) == 30 and any("mirrored" in n for n in res["target_images"])
    assert len(list((comfy.base / "input" / "lineas_bench_target").iterdir())) == 30
    for method in ("lineas", "layer-wise"):
        r = res["methods"][method]
        zero, one = r["curve"]
        assert zero["strength"] == 0.0 and zero["ssim_mean"] == pytest.approx(1.0)
        assert one["ssim_mean"] < 1.0
        assert r["training"]["method"] == method
        assert (tmp_path / "bench" / f"sweep_{method}.png").is_file()
    assert (tmp_path / "bench" / "target.png").is_file() and (tmp_path / "bench" / "source.png").is_file()
    assert res["methods"]["lineas"]["curve"][0]["p_mean"] == res["methods"]["layer-wise"]["curve"][0]["p_mean"]
    assert {"lineas_rise_points", "layer-wise_rise_points", "at_layerwise_strength1",
            "layerwise_ssim_at_lineas_points"} <= set(res["comparison"])


@pytest.mark.comfy
def test_unet_training_resumes_to_the_uninterrupted_result(comfy, tmp_path):
    """The 70-minute UNet stage keeps its whole state every save_every steps: a run interrupted after step
    3 of 5 and started again continues from step 2 to exactly the weights of an uninterrupted run."""
    from bench.diffusion.unet import UNetConfig, train_unet

    torch.manual_seed(0)
    lat = torch.randn(12, 4, 8, 8)
    cfg = UNetConfig(steps=5, batch=3, warmup=2, middle=-2, log_every=1)
    whole, stats = train_unet(lat, cfg, seed=0)
    state = tmp_path / "unet.partial.safetensors"

    def interrupt(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_unet(lat, cfg, seed=0, resume=state, key="k", save_every=2, on_step=interrupt)
    assert state.is_file()  # the state of step 2 survived the interrupt
    ran: list[int] = []
    resumed, rstats = train_unet(lat, cfg, seed=0, resume=state, key="k", save_every=2, on_step=ran.append)
    assert ran == [3, 4, 5]  # it did continue from step 2, not start again
    assert not state.exists()  # removed once the stage is done
    assert rstats["loss_curve"] == stats["loss_curve"]
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    with pytest.raises(KeyboardInterrupt):  # a stale state of another configuration (seed 1) ...
        train_unet(lat, cfg, seed=1, resume=state, key="seed 1", save_every=2, on_step=interrupt)
    ran.clear()
    fresh, _ = train_unet(lat, cfg, seed=0, resume=state, key="k", save_every=2, on_step=ran.append)
    assert ran == [1, 2, 3, 4, 5]
    assert all(torch.equal(fresh[k], whole[k]) for k in whole)  # ... is not resumed: the run starts afresh
