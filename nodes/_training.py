"""Training a style steering on a ComfyUI MODEL from two image sets (the engine does the learning).

Images are VAE-encoded, noised at a few noise levels of the model's own schedule, and run through the
diffusion model with a fixed conditioning; each (image, noise level) is one sample, and the loss
compares source and target only within the same noise level (the engine's groups)."""

from __future__ import annotations

import logging
import time

import torch

from ..lineas_engine import (
    LineasError,
    Steering,
    TrainConfig,
    TrainResult,
    evaluate_loss,
    find_sites,
    fit,
    fit_layerwise,
    grouped_loss,
    model_fingerprint,
    record_activations,
    site_specs,
)
from ._memory import auto_micro_batch, prepare_training, trainable_weights
from ._patcher import architecture_of
from ._steering_ref import SteeringRef

logger = logging.getLogger(__name__)

METHODS = {"lineas": "end to end, OT loss at every site seeing every upstream map",
           "layer-wise": "baseline: each site's affine OT map fitted alone on the unsteered model"}
PRESETS = {"all norms": "norms", "ResNet norms": "resnet_norms", "transformer norms": "transformer_norms",
           "custom regex": None}


def _identity(weight):
    return weight


def _trainable_clone(model):
    """A clone whose comfy-op weights are passed through an identity weight wrapper: ComfyUI then casts a
    fresh (non-inference) copy for every forward, so autograd can save it for backward. The shared
    weights are never replaced."""
    m = model.clone()
    dm = m.get_model_object("diffusion_model")
    for name, module in dm.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        for kind in ("weight", "bias"):
            if getattr(module, kind, None) is not None:
                m.add_weight_wrapper(f"diffusion_model.{name}.{kind}", _identity)
    return m


def choose_sites(dm, preset: str, regex: str) -> list[str]:
    if preset not in PRESETS:
        raise LineasError(f"site preset must be one of {list(PRESETS)}, got {preset!r}")
    if PRESETS[preset] is None:
        if not regex.strip():
            raise LineasError("site preset 'custom regex' needs a regex, e.g. .*out_layers\\.0")
        return find_sites(dm, pattern=regex.strip())
    return find_sites(dm, preset=PRESETS[preset], pattern=regex.strip() or None)


def _context(model, conditioning, dtype) -> torch.Tensor:
    if conditioning:
        return conditioning[0][0][:1].detach().clone().to(dtype)
    unet_cfg = getattr(model.model.model_config, "unet_config", {}) or {}
    dim = unet_cfg.get("context_dim") or 768
    return torch.zeros(1, 77, dim, dtype=dtype)


def _noised_samples(model, vae, images: torch.Tensor, percents: list[float], seed: int, group_base: int = 0):
    base = model.model
    ms = model.get_model_object("model_sampling")
    with torch.no_grad():  # the VAE's parameters require grad; nothing here should be recorded
        lat = base.process_latent_in(vae.encode(images[..., :3]).float()).clone()
    gen = torch.Generator().manual_seed(seed)
    xs, sig, grp = [], [], []
    for k, p in enumerate(percents):
        sigma = torch.tensor([float(ms.percent_to_sigma(p))])
        noise = torch.randn(lat.shape, generator=gen)
        for i in range(lat.shape[0]):
            xs.append(ms.noise_scaling(sigma, noise[i : i + 1], lat[i : i + 1].cpu()))
            sig.append(sigma)
            grp.append(k + group_base)
    return {"x": torch.cat(xs), "sigma": torch.cat(sig), "lineas_group": torch.tensor(grp)}


def train_style(model, vae, target_images: torch.Tensor, source_images: torch.Tensor, conditioning=None, *,
                steps: int, lr: float, optimizer: str, sparsity: float, preset: str, regex: str,
                noise_start: float, noise_end: float, levels: int, batch_size: int, micro_batch: int, seed: int,
                on_step=None, name: str = "style", method: str = "lineas", checkpointing: str = "auto"):
    """Returns (SteeringRef, TrainResult). Must run outside inference mode (the node takes care).
    ``method="layer-wise"`` fits the baseline in closed form instead (``steps``/``lr``/``optimizer``/
    ``sparsity`` unused); its result holds the OT loss before and after, on the same noise-level groups."""
    if method not in METHODS:
        raise LineasError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not 0.0 <= noise_start < noise_end <= 1.0:
        raise LineasError(f"need 0 <= noise_start < noise_end <= 1, got {noise_start}, {noise_end}")
    if target_images.shape[0] < 2 or source_images.shape[0] < 2:
        raise LineasError(f"need at least 2 target and 2 source images, got {target_images.shape[0]} and "
                          f"{source_images.shape[0]}")
    percents = torch.linspace(noise_start, noise_end, levels).tolist() if levels > 1 else [noise_start]
    src = _noised_samples(model, vae, source_images, percents, seed)
    tgt = _noised_samples(model, vae, target_images, percents, seed + 1)
    patcher, checkpointed = prepare_training(model, checkpointing)
    base = patcher.model
    dm = patcher.get_model_object("diffusion_model")
    device, dtype = patcher.load_device, base.get_dtype()
    ctx = _context(model, conditioning, torch.float32).to(device)
    sites = choose_sites(dm, preset, regex)
    steering = Steering(site_specs(dm, sites)).to(device)

    def forward(b):
        x = b["x"].to(device)
        return base.apply_model(x, b["sigma"].to(device), c_crossattn=ctx.expand(x.shape[0], -1, -1))

    with trainable_weights(dm):  # no second copy of the weights; the originals are back afterwards
        if method == "lineas" and micro_batch == 0:
            micro_batch = auto_micro_batch(dm, steering, forward, src, batch_size, device) or 0
        cfg = TrainConfig(steps=steps, lr=lr, optimizer=optimizer, gamma=sparsity, batch_size=batch_size,
                          micro_batch_size=micro_batch or None, seed=seed, mask_key=None, schedule="cosine")
        if method == "layer-wise":
            steering, result = _fit_layerwise(dm, steering.specs, forward, src, tgt, cfg, device)
        else:
            # the loss on the whole source set before / after (as the layer-wise path reports it), not a batch's
            result = fit(dm, steering, forward, src, tgt, config=cfg, on_step=on_step, eval_source=src)
    arch = architecture_of(model)
    ref = SteeringRef(steering=steering.cpu(), architecture=arch, fingerprint=model_fingerprint(dm, arch),
                      training={**result.summary(), "method": method, "sites": len(sites), "noise_percents": percents,
                                "target_images": int(target_images.shape[0]),
                                "source_images": int(source_images.shape[0]), "dtype": str(dtype),
                                "micro_batch": micro_batch, "gradient_checkpointing": checkpointed},
                      config=cfg.to_dict(), name=name)
    logger.info("trained %s (%s) on %d sites: loss %.4g -> %.4g", name, method, len(sites), result.losses[0],
                result.losses[-1])
    return ref, result


def _fit_layerwise(dm, specs, forward, src, tgt, cfg: TrainConfig, device) -> tuple[Steering, TrainResult]:
    """The layer-wise baseline on the same samples, with the end-to-end OT loss (per noise level) of the
    unsteered and the steered model so both methods report the same figure."""
    t0 = time.perf_counter()
    tgt_acts, src_acts = (record_activations(dm, specs, forward, x, batch_size=cfg.batch_size, mask_key=None)
                          for x in (tgt, src))
    steering = fit_layerwise(dm, specs, forward, src, target_acts=tgt_acts, source_acts=src_acts).to(device)
    src_groups, tgt_groups = src[cfg.group_key], tgt[cfg.group_key]
    before = float(grouped_loss(src_acts, tgt_acts, src_groups, tgt_groups, cfg.reduction))  # the unsteered model
    after = evaluate_loss(dm, steering, forward, src, tgt_acts, config=cfg, target_groups=tgt_groups)
    return steering, TrainResult(losses=[before, after], eval_before=before, eval_after=after,
                                 seconds=time.perf_counter() - t0, steps=0, support=1.0)
