import torch

from lineas_engine import find_sites, pool, probe_site_specs, site_specs


def test_llama_presets(tiny_llama):
    post = find_sites(tiny_llama, preset="post_norms")
    assert post == [f"model.layers.{i}.post_attention_layernorm" for i in range(3)]
    norms = find_sites(tiny_llama, preset="norms")
    assert "model.norm" in norms and "model.layers.0.input_layernorm" in norms
    assert not any("rotary" in n or "mlp" in n for n in norms)
    specs = site_specs(tiny_llama, post)
    assert all(s.dim == 32 and s.channel_axis == -1 for s in specs.values())


def test_gemma3_post_norms_are_both_per_block(tiny_gemma3):
    post = find_sites(tiny_gemma3, preset="post_norms")
    assert post == [f"model.layers.{i}.{k}" for i in range(2)
                    for k in ("post_attention_layernorm", "post_feedforward_layernorm")]


def test_unet_presets_by_module_type(tiny_unet):
    norms = find_sites(tiny_unet, preset="norms")
    res = find_sites(tiny_unet, preset="resnet_norms")
    tr = find_sites(tiny_unet, preset="transformer_norms")
    assert res and tr and not set(res) & set(tr)
    assert all(".resnets." in n for n in res)
    assert all(".attentions." in n for n in tr)
    assert set(res) | set(tr) <= set(norms)
    specs = site_specs(tiny_unet, res)
    assert all(s.channel_axis == 1 for s in specs.values())
    # regex and preset together
    assert find_sites(tiny_unet, pattern=r"down_blocks\..*", preset="resnet_norms") == [
        n for n in res if n.startswith("down_blocks.")]


def test_probe_site_specs_measures_width(tiny_unet):
    from tests.engine.helpers import unet_batch, unet_forward

    names = ["down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.transformer_blocks.0.ff"]
    specs = probe_site_specs(tiny_unet, names, unet_forward(tiny_unet), unet_batch(1, 0))
    assert specs[names[0]].dim == 16 and specs[names[0]].channel_axis == 1
    assert specs[names[1]].dim == 16 and specs[names[1]].channel_axis == -1


def test_pool_masked_tokens_and_spatial():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    out = pool(h, -1, mask)
    torch.testing.assert_close(out[0], h[0, 1:].mean(0))
    torch.testing.assert_close(out[1], h[1, :2].mean(0))
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(pool(x, 1), x.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(h, -1), h.mean(1))
