"""Site presets find the norm layers of ComfyUI's own DiT models (Flux, SD3 MMDiT) by module type,
not by name (tiny configs of the real classes, random weights)."""

import pytest
import torch

pytestmark = pytest.mark.comfy


def test_flux_and_mmdit_norms_by_type(comfy):
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    from lineas_engine import NoMatchingSiteError, find_sites, site_specs

    ops = comfy.ops.disable_weight_init
    from devtools.comfy_families import with_current_keys

    flux = Flux(**with_current_keys("flux_dev", dict(
        in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64, mlp_ratio=2.0,
        num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
        qkv_bias=True, guidance_embed=False)), operations=ops, device="cpu", dtype=torch.float32)
    norms = find_sites(flux, preset="norms")
    assert {"double_blocks.0.img_norm1", "double_blocks.0.txt_norm2", "single_blocks.0.pre_norm",
            "double_blocks.0.img_attn.norm.query_norm"} <= set(norms)
    assert "double_blocks.0.img_attn.norm" not in norms  # QKNorm returns a tuple: a container, not a site
    assert set(find_sites(flux, preset="transformer_norms")) == set(norms) - {"final_layer.norm_final"}
    with pytest.raises(NoMatchingSiteError, match="resnet_norms"):
        find_sites(flux, preset="resnet_norms")
    assert site_specs(flux, ["double_blocks.0.img_norm1"])["double_blocks.0.img_norm1"].dim == 64
    mmdit = MMDiT(input_size=None, patch_size=2, in_channels=16, depth=2, mlp_ratio=2.0, learn_sigma=False,
                  adm_in_channels=32, pos_embed_max_size=16, num_patches=64, operations=ops, device="cpu",
                  dtype=torch.float32,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 32, "out_features": 128}})
    assert "joint_blocks.0.x_block.norm1" in find_sites(mmdit, preset="transformer_norms")
