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
    num_samples,
    record_activations,
    slice_samples,
)
from ._conditioning import check_conditioning, encode_images, run_in_sampling, training_compute_dtype
from ._families import inputs_copied, is_qk_norm, plain_parameters_copied, probe_widths
from ._patcher import architecture_of
from ._steering_ref import SteeringRef

logger = logging.getLogger(__name__)

METHODS = {"lineas": "end to end, OT loss at every site seeing every upstream map",
           "layer-wise": "baseline: each site's affine OT map fitted alone on the unsteered model"}
PRESETS = {"all norms": "norms", "ResNet norms": "resnet_norms", "transformer norms": "transformer_norms",
           "custom regex": None, "all norms + QK norms": "norms"}
# QK norms (DiT attention's per-head-dimension query/key RMSNorms) scale attention logits, i.e. its
# temperature, with one map shared by all heads: not a per-neuron map of the activations the loss compares
# (the paper's K,Q ablation: weak effect). The default presets leave them out; "all norms + QK norms" keeps them.
NO_QK = ("all norms", "transformer norms")


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
    """Module names for a preset (norm layers found by type; "all norms" leaves DiT QK norms out, see
    PRESETS) filtered by ``regex``, or the regex alone for "custom regex"."""
    if preset not in PRESETS:
        raise LineasError(f"site preset must be one of {list(PRESETS)}, got {preset!r}")
    if PRESETS[preset] is None:
        if not regex.strip():
            raise LineasError("site preset 'custom regex' needs a regex, e.g. .*out_layers\\.0")
        return find_sites(dm, pattern=regex.strip())
    names = find_sites(dm, preset=PRESETS[preset], pattern=regex.strip() or None)
    if preset in NO_QK:
        kept = [n for n in names if not is_qk_norm(n)]
        if len(kept) < len(names):
            logger.info("preset %r: %d QK norms left out (preset 'all norms + QK norms' keeps them)", preset,
                        len(names) - len(kept))
        names = kept or names
    return names


def _noised_samples(model, lat: torch.Tensor, percents: list[float], seed: int, group_base: int = 0):
    """Each (latent, noise level) is one sample; ``lat`` in VAE space [N, C, (T,) h, w]."""
    base = model.model
    ms = model.get_model_object("model_sampling")
    lat = base.process_latent_in(lat).cpu().clone()
    gen = torch.Generator().manual_seed(seed)
    xs, sig, grp = [], [], []
    for k, p in enumerate(percents):
        sigma = torch.tensor([float(ms.percent_to_sigma(p))])
        noise = torch.randn(lat.shape, generator=gen)
        for i in range(lat.shape[0]):
            xs.append(ms.noise_scaling(sigma, noise[i : i + 1], lat[i : i + 1]))
            sig.append(sigma)
            grp.append(k + group_base)
    return {"x": torch.cat(xs), "sigma": torch.cat(sig), "lineas_group": torch.tensor(grp)}


def train_style(model, vae, target_images: torch.Tensor, source_images: torch.Tensor, conditioning=None, *,
                steps: int, lr: float, optimizer: str, sparsity: float, preset: str, regex: str,
                noise_start: float, noise_end: float, levels: int, batch_size: int, micro_batch: int, seed: int,
                on_step=None, name: str = "style", method: str = "lineas"):
    """Returns (SteeringRef, TrainResult). Must run outside inference mode (the node takes care).

    Every forward goes through ComfyUI's sampling path under ``conditioning`` (nodes/_conditioning.py), so
    each family gets the inputs sampling gives it. ``method="layer-wise"`` fits the baseline in closed
    form instead (``steps``/``lr``/``optimizer``/``sparsity`` unused); its result holds the OT loss before
    and after, on the same noise-level groups."""
    if method not in METHODS:
        raise LineasError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not 0.0 <= noise_start < noise_end <= 1.0 and not (levels == 1 and 0.0 <= noise_start <= 1.0):
        raise LineasError(f"need 0 <= noise_start < noise_end <= 1, got {noise_start}, {noise_end}")
    if target_images.shape[0] < 2 or source_images.shape[0] < 2:
        raise LineasError(f"need at least 2 target and 2 source images, got {target_images.shape[0]} and "
                          f"{source_images.shape[0]}")
    arch = architecture_of(model)
    check_conditioning(conditioning, arch)
    percents = torch.linspace(noise_start, noise_end, levels).tolist() if levels > 1 else [noise_start]
    src = _noised_samples(model, encode_images(vae, source_images, model), percents, seed)
    tgt = _noised_samples(model, encode_images(vae, target_images, model), percents, seed + 1)
    patcher = _trainable_clone(model)
    plain_parameters_copied(patcher)  # parameters of non comfy-op modules (e.g. DiT RMSNorms), on the clone
    train_dtype = training_compute_dtype(patcher)
    if train_dtype is not None:
        patcher.set_model_compute_dtype(train_dtype)
    cfg = TrainConfig(steps=steps, lr=lr, optimizer=optimizer, gamma=sparsity, batch_size=batch_size,
                      micro_batch_size=micro_batch or None, seed=seed, mask_key=None, schedule="cosine")
    chunk = min(num_samples(src), cfg.micro_batch_size or cfg.batch_size)

    def train(model_call, base):
        dm = base.diffusion_model
        device = patcher.load_device

        def forward(b):
            return model_call(b["x"].to(device), b["sigma"].to(device))

        sites = choose_sites(dm, preset, regex)
        # two images at the same noise level: sites that see only the conditioning are left out of presets
        specs = probe_widths(dm, sites, lambda: forward(slice_samples(src, slice(0, 2))),
                             drop_constant=PRESETS[preset] is not None)
        steering = Steering(specs).to(device)
        with inputs_copied(dm, list(specs)):
            if method == "layer-wise":
                steering, result = _fit_layerwise(dm, steering.specs, forward, src, tgt, cfg, device)
            else:  # the loss on the whole source set before / after (as layer-wise reports it), not a batch's
                result = fit(dm, steering, forward, src, tgt, config=cfg, on_step=on_step, eval_source=src)
        return steering, result, dm, base.get_dtype(), base.manual_cast_dtype

    latent_shape = (chunk,) + tuple(src["x"].shape[1:])
    steering, result, dm, dtype, cast = run_in_sampling(patcher, conditioning, latent_shape, train, seed=seed)
    ref = SteeringRef(steering=steering.cpu(), architecture=arch, fingerprint=model_fingerprint(dm, arch),
                      training={**result.summary(), "method": method, "sites": len(steering.sites),
                                "noise_percents": percents, "target_images": int(target_images.shape[0]),
                                "source_images": int(source_images.shape[0]), "dtype": str(dtype),
                                "compute_dtype": str(train_dtype or cast or dtype)},
                      config=cfg.to_dict(), name=name)
    logger.info("trained %s (%s) on %d sites: loss %.4g -> %.4g", name, method, len(steering.sites),
                result.losses[0], result.losses[-1])
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
