"""Training forwards through ComfyUI's own sampling path, so every family gets the model inputs sampling
gives it (SDXL's pooled ``y``, Flux / HunyuanVideo guidance, Lumina2's ``num_tokens``, attention masks,
HiDream's llama states, ...), with the MODEL's wrappers and patches active.

As ComfyUI's native trainer does (comfy_extras/nodes_train.py, TrainSampler under a Guider), the training
loop runs inside a custom ``comfy.samplers.Sampler`` driven by a ``CFGGuider`` at cfg 1 with only the
positive CONDITIONING: ``prepare_sampling`` loads the model, ``convert_cond`` / ``process_conds`` build the
conds at the latent size of the training images (comfy/samplers.py CFGGuider.inner_sample), and each
training forward is the guider's own model call (``sampling_function`` -> ``calc_cond_batch`` ->
``BaseModel.apply_model`` with the APPLY_MODEL / DIFFUSION_MODEL wrappers)."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..lineas_engine import LineasError

logger = logging.getLogger(__name__)

__all__ = ["run_in_sampling", "check_conditioning", "ConditioningMismatchError", "training_compute_dtype",
           "encode_images"]


class ConditioningMismatchError(LineasError):
    """The CONDITIONING does not fit the model (made by another family's text encoder)."""


def check_conditioning(conditioning, arch: str) -> None:
    if not conditioning:
        raise LineasError(
            f"connect a CONDITIONING to the training node: the {arch} model is trained under the conditioning it "
            "samples with; encode a neutral prompt (e.g. an empty CLIPTextEncode) with this model's own text "
            "encoder. An all-zero conditioning is not the empty prompt, and most families need more than a "
            "cross-attention tensor (pooled vector, guidance, token counts)")
    for i, c in enumerate(conditioning):
        if not (isinstance(c, (list, tuple)) and len(c) == 2 and torch.is_tensor(c[0]) and isinstance(c[1], dict)):
            raise LineasError(f"conditioning entry {i} is not [tensor, dict]; connect a CONDITIONING output "
                              "(e.g. CLIPTextEncode)")


def _describe(conditioning) -> str:
    c, extra = conditioning[0]
    pooled = extra.get("pooled_output")
    tail = f", pooled {tuple(pooled.shape)}" if torch.is_tensor(pooled) else ""
    return f"cross-attention {tuple(c.shape)}{tail}"


def _detached(conditioning):
    """Fresh, non-inference copies of the tensors (node outputs are created in inference mode)."""
    out = []
    for c, extra in conditioning:
        out.append([c.detach().clone(),
                    {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in extra.items()}])
    return out


def run_in_sampling(model, conditioning, latent_shape: tuple[int, ...], fn: Callable, seed: int = 0):
    """Run ``fn(forward, base_model)`` inside ComfyUI's sampling of ``model`` (a ModelPatcher clone) with
    ``conditioning``; ``forward(x, sigma)`` is the guider's model call on noised latents ``x`` [B, ...] (model
    space) at per-sample ``sigma`` [B]. Returns what ``fn`` returns. A conditioning that the model cannot
    take (another family's) becomes a :class:`ConditioningMismatchError`."""
    import comfy.samplers

    from ._patcher import architecture_of

    arch = architecture_of(model)
    check_conditioning(conditioning, arch)
    result: dict = {}

    class _TrainingSampler(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            def forward(x, sigma):
                out = model_wrap(x, sigma, **extra_args)
                result["forward_ran"] = True
                return out

            result["value"] = fn(forward, model_wrap.inner_model)
            return latent_image

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": _detached(conditioning)})
    guider.set_cfg(1.0)
    zeros = torch.zeros(latent_shape)
    try:
        guider.sample(zeros, zeros.clone(), _TrainingSampler(), sigmas=torch.tensor([1.0, 0.0]), seed=seed)
    except (RuntimeError, KeyError, AssertionError, TypeError) as e:
        if "forward_ran" in result:  # the conditioning was taken; this is another error
            raise
        raise ConditioningMismatchError(
            f"the CONDITIONING ({_describe(conditioning)}) does not fit this {arch} model: "
            f"{type(e).__name__}: {str(e)[:300]}. Connect a CONDITIONING made by this model's own text encoder "
            "(another family's, e.g. SD1.5's on Flux, has the wrong widths or lacks inputs)") from e
    return result["value"]


def training_compute_dtype(patcher) -> torch.dtype | None:
    """The compute dtype to train with, or None to keep the model's. fp16 compute underflows the
    steering's gradients (a mean-pooled OT loss over hundreds of sites gives per-element gradients near
    1e-11, below fp16's smallest subnormal 6e-8): train in bf16 where the device supports it (as ComfyUI's
    trainer does), else fp32. bf16 / fp32 compute is kept; fp8 weights are cast by ComfyUI to their
    manual-cast dtype, to which the same rule applies."""
    import comfy.model_management as mm

    compute = patcher.get_model_object("manual_cast_dtype") or patcher.model.get_dtype()  # with ModelComputeDtype
    if compute in (torch.bfloat16, torch.float32, torch.float64):
        return None
    device = patcher.load_device
    if mm.should_use_bf16(device) and device.type != "cpu":
        return torch.bfloat16
    return torch.float32


def encode_images(vae, images: torch.Tensor, model) -> torch.Tensor:
    """VAE-encode an IMAGE batch [N, H, W, C] into N latents in the model's latent layout. Video VAEs
    (Wan, Qwen-Image: ``latent_dim == 3``) encode a batch as the frames of ONE video, so each image is
    encoded alone (a one-frame video); image latents [N, C, h, w] for a video model become [N, C, 1, h, w]."""
    images = images[..., :3]
    with torch.no_grad():
        if getattr(vae, "latent_dim", 2) == 3:
            lat = torch.cat([vae.encode(images[i : i + 1]).float() for i in range(images.shape[0])])
        else:
            lat = vae.encode(images).float()
    fmt = model.get_model_object("latent_format")
    if getattr(fmt, "latent_dimensions", 2) == 3 and lat.dim() == 4:
        lat = lat.unsqueeze(2)
    if lat.shape[1] != fmt.latent_channels:
        raise LineasError(f"the VAE gives {lat.shape[1]}-channel latents but this model takes "
                          f"{fmt.latent_channels}; connect the VAE of the model's family")
    return lat
