"""The single-file SD1.5-format checkpoint: ``model.diffusion_model.*`` (the trained UNet, fp32),
``first_stage_model.*`` (the trained TAESD, fp32) and every CLIP-L key under
``cond_stage_model.transformer.*`` (random, fp8: ComfyUI leaves missing keys uninitialised, so all must be
there). The CLIP's final layer norm is zeroed, so every prompt encodes to exactly zero: the conditioning
this unconditional UNet was trained with, whether or not a workflow uses ConditioningZeroOut."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lineas_engine import atomic_write_bytes

CLIP_DTYPE = torch.float8_e4m3fn


def clip_state_dict(seed: int) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768))
    sd = {k if k.startswith("text_model.") else f"text_model.{k}": v  # key layout differs across versions
          for k, v in clip.state_dict().items() if "position_ids" not in k}
    for k in ("text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"):
        sd[k] = torch.zeros_like(sd[k])
    return {k: v.to(CLIP_DTYPE) for k, v in sd.items()}


def build(unet_sd: dict[str, torch.Tensor], vae_sd: dict[str, torch.Tensor], seed: int = 0) -> dict:
    sd = {f"model.diffusion_model.{k}": v.float() for k, v in unet_sd.items()}
    sd.update({f"first_stage_model.{k}": v.float() for k, v in vae_sd.items()})
    sd.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_state_dict(seed).items()})
    return {k: v.contiguous() for k, v in sd.items()}


def save_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """safetensors with one metadata key ``lineas`` (JSON; one key keeps files byte-deterministic), written
    atomically (:func:`lineas_engine.atomic_write_bytes`)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, save(tensors, metadata={"lineas": json.dumps(meta or {}, sort_keys=True)}))


def read_meta(path: Path) -> dict:
    """The ``lineas`` metadata of a file written by ``save_atomic``; {} when absent or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("lineas", "{}"))
    except (OSError, ValueError):
        return {}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
