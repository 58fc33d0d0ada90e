import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from lineas_engine import NoMatchingSiteError, find_sites, pool, site_specs

REPO = Path(__file__).resolve().parents[2]


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


def test_site_specs_names_the_sites_whose_width_is_not_an_attribute():
    class ScaleOnlyNorm(nn.Module):  # an RMS norm whose only parameter is ``.scale`` (Flux's QK norms)
        def __init__(self, d):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(d))

    root = nn.Sequential(nn.LayerNorm(4), ScaleOnlyNorm(4))
    assert site_specs(root, ["0"])["0"].dim == 4
    with pytest.raises(NoMatchingSiteError, match=r"width of \['1'\].*SiteSpec"):
        site_specs(root, ["0", "1"])


# -- the width probe: nodes/_families.probe_widths, the one the node pack runs; it needs torch only ----------

def _families():
    """``nodes/_families.py`` imported without ComfyUI: under a stand-in package that holds the repo's
    ``lineas_engine`` and ``nodes`` folders but does not run their ComfyUI imports (``nodes/__init__.py``)."""
    pkg = "lineas_probe_pack"
    if f"{pkg}.nodes" not in sys.modules:
        for name, path in ((pkg, REPO), (f"{pkg}.nodes", REPO / "nodes")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    return importlib.import_module(f"{pkg}.nodes._families")


class _QKNorm(nn.Module):
    """Flux's RMS norm of queries / keys per head dimension: output [B, heads, T, head_dim], ``.scale``."""

    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class _Probed(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_norm = _QKNorm(8)
        self.group_norm = nn.GroupNorm(2, 4, affine=False)  # no parameter: a feature map takes axis 1
        self.token_norm = nn.LayerNorm(6)
        self.context_norm = nn.LayerNorm(6)  # sees only the conditioning, the same for every image
        self.unused = nn.LayerNorm(6)

    def forward(self, q, image, tokens, context):
        return self.q_norm(q), self.group_norm(image), self.token_norm(tokens), self.context_norm(context)


def _probe_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g),
            torch.randn(2, 5, 6, generator=g), torch.randn(1, 5, 6, generator=g).expand(2, 5, 6))


def test_probe_reads_each_width_on_its_own_axis(tiny_unet):
    from tests.engine.helpers import unet_batch, unet_forward

    probe_widths = _families().probe_widths
    names = ["down_blocks.0.resnets.0.conv1", "down_blocks.0.attentions.0.transformer_blocks.0.ff"]
    specs = probe_widths(tiny_unet, names, lambda: unet_forward(tiny_unet)(unet_batch(1, 0)))
    assert (specs[names[0]].dim, specs[names[0]].channel_axis) == (16, 1)
    assert (specs[names[1]].dim, specs[names[1]].channel_axis) == (16, -1)

    model, inputs = _Probed(), _probe_inputs()
    specs = probe_widths(model, ["q_norm", "group_norm", "token_norm", "unused"], lambda: model(*inputs))
    got = {n: (s.dim, s.channel_axis) for n, s in specs.items()}
    # QK norm: the head dimension its .scale spans (last axis), not the 3 heads on axis 1
    assert got == {"q_norm": (8, -1), "group_norm": (4, 1), "token_norm": (6, -1)}  # "unused" never ran


def test_probe_drops_sites_that_see_only_the_conditioning_and_refuses_when_none_ran():
    families = _families()
    model, inputs = _Probed(), _probe_inputs()
    names = ["token_norm", "context_norm"]
    assert set(families.probe_widths(model, names, lambda: model(*inputs))) == set(names)
    assert set(families.probe_widths(model, names, lambda: model(*inputs), drop_constant=True)) == {"token_norm"}
    with pytest.raises(families.NoMatchingSiteError, match="none of the 1 sites ran"):
        families.probe_widths(model, ["unused"], lambda: model(*inputs))
    with pytest.raises(families.NoMatchingSiteError, match="not a module"):
        families.probe_widths(model, ["missing"], lambda: None)


def test_pool_masked_tokens_and_spatial():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    out = pool(h, -1, mask)
    torch.testing.assert_close(out[0], h[0, 1:].mean(0))
    torch.testing.assert_close(out[1], h[1, :2].mean(0))
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(pool(x, 1), x.mean(dim=(2, 3)))
    torch.testing.assert_close(pool(h, -1), h.mean(1))
