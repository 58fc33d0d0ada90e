"""Build a tiny SD1.5-format checkpoint that ComfyUI's ordinary CheckpointLoaderSimple accepts: a
one-level UNet with SD1.5 key names (model_channels 320, context 768, measured depths), a TAESD-format
VAE, and every CLIP-L key (random, fp16). Deterministic per seed; written once to a cache outside the
repo. Must run in a process where ComfyUI is importable (see devtools.comfy_runtime)."""

from __future__ import annotations

from pathlib import Path

import torch


def _init_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """comfy ops skip weight init: give every parameter a deterministic value."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            lname = name.lower()
            if leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif p.dim() == 1 and ("norm" in lname or "ln" in lname or "in_layers.0" in name or "out_layers.0" in name
                                   or name.startswith("out.0")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def build_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from transformers import CLIPTextConfig, CLIPTextModel

    gen = torch.Generator().manual_seed(seed)
    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=[1], num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                     transformer_depth_output=[1, 1], transformer_depth_middle=1, context_dim=768,
                     use_linear_in_transformer=False, legacy=False, operations=comfy.ops.disable_weight_init,
                     device="cpu", dtype=torch.float32)
    _init_(unet, gen)
    vae = TAESD()
    _init_(vae, gen)
    with torch.no_grad():
        vae.vae_scale.fill_(1 / 64)  # a random UNet's latents are large: keep TAESD's tanh out of saturation
        vae.vae_shift.fill_(0.0)
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768))
    sd = {f"model.diffusion_model.{k}": v.float() for k, v in unet.state_dict().items()}
    sd.update({f"first_stage_model.{k}": v.float() for k, v in vae.state_dict().items()})
    sd.update({f"cond_stage_model.transformer.{k}": v.half() for k, v in clip.state_dict().items()
               if "position_ids" not in k})
    return {k: v.contiguous() for k, v in sd.items()}


def ensure_checkpoint(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save

    from lineas_engine import atomic_write_bytes

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, save(build_state_dict(seed)))
