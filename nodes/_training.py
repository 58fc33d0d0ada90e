"""Training a style steering on a ComfyUI MODEL from two image sets (the engine does the learning).

Images are VAE-encoded, noised at a few noise levels of the model's own schedule, and run through the
diffusion model with a fixed conditioning; each (image, noise level) is one sample, and the loss
compares source and target only within the same noise level (the engine's groups)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from ..lineas_engine import (
    LineasError,
    NoMatchingSiteError,
    Steering,
    SteeringRecord,
    TrainConfig,
    find_sites,
    get_method,
    model_fingerprint,
    num_samples,
    slice_samples,
    train,
)
from ._compat import training_mode
from ._conditioning import check_conditioning, encode_images, run_in_sampling, training_compute_dtype
from ._families import inputs_copied, is_qk_norm, probe_widths
from ._memory import auto_micro_batch, prepare_training, trainable_weights, training_clone
from ._patcher import CompiledModelError, architecture_of, compiled_message, is_compiled

logger = logging.getLogger(__name__)

PRESETS = {"all norms": "norms", "ResNet norms": "resnet_norms", "transformer norms": "transformer_norms",
           "custom regex": None, "all norms + QK norms": "norms"}
# QK norms (DiT attention's per-head-dimension query/key RMSNorms) scale attention logits, i.e. its
# temperature, with one map shared by all heads: not a per-neuron map of the activations the loss compares
# (the paper's K,Q ablation: weak effect). The default presets leave them out; "all norms + QK norms" keeps them.
NO_QK = ("all norms", "transformer norms")


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


def _norm_modules(dm) -> list[str]:
    """Every norm layer of the residual streams, sites or not: a norm that is not a site still saves its
    input for backward when a steering upstream makes that input require grad, and DiT blocks then update
    it in place (Flux's text stream after ``txt_norm2``, once that site is dropped as seeing only the
    conditioning). QK norms are left out unless they are sites: their inputs are views of the qkv
    projection, not updated in place, and a copy of q and k in every block would cost GBs at 1024 px."""
    try:
        return [n for n in find_sites(dm, preset="norms") if not is_qk_norm(n)]
    except NoMatchingSiteError:
        return []


def _noised_samples(model, lat: torch.Tensor, percents: list[float], seed: int):
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
            grp.append(k)
    return {"x": torch.cat(xs), "sigma": torch.cat(sig), "lineas_group": torch.tensor(grp)}


@dataclass(frozen=True)
class StyleTrainingOptions:
    """The training knobs of :func:`train_style` (the training node builds one from its inputs).

    ``preset`` is a key of :data:`PRESETS` and ``regex`` filters it (or is the whole choice for "custom
    regex"); ``noise_start`` / ``noise_end`` are fractions of the sampling schedule (0 = pure noise, 1 = the
    clean image) with ``levels`` evenly spaced levels between them (one level: ``noise_start`` alone);
    ``micro_batch`` 0 = chosen from the free memory for iterative methods (see :func:`auto_micro_batch`),
    the whole batch otherwise; ``checkpointing`` is a key of ``_memory.CHECKPOINTING``."""

    steps: int
    lr: float
    optimizer: str
    sparsity: float
    preset: str
    regex: str
    noise_start: float
    noise_end: float
    levels: int
    batch_size: int
    micro_batch: int
    seed: int
    name: str = "style"
    method: str = "lineas"
    checkpointing: str = "auto"

    def noise_percents(self) -> list[float]:
        """The noise levels trained on, as fractions of the sampling schedule."""
        if self.levels > 1:
            return torch.linspace(self.noise_start, self.noise_end, self.levels).tolist()
        return [self.noise_start]

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, optimizer=self.optimizer, gamma=self.sparsity,
                           batch_size=self.batch_size, micro_batch_size=self.micro_batch or None, seed=self.seed,
                           mask_key=None, schedule="cosine")


def train_style(model, vae, target_images: torch.Tensor, source_images: torch.Tensor, conditioning=None,
                options: StyleTrainingOptions | None = None, *, on_step=None, **knobs):
    """Returns (SteeringRecord, TrainResult). Must run outside inference mode (the node takes care).

    ``options`` holds the training knobs; they may also be given as keywords (the fields of
    :class:`StyleTrainingOptions`), which build the options. Every forward goes through ComfyUI's sampling
    path under ``conditioning`` (nodes/_conditioning.py), so each family gets the inputs sampling gives it.
    A method that is not iterative (``"layer-wise"``) fits in closed form instead (``steps`` / ``lr`` /
    ``optimizer`` / ``sparsity`` unused); every method reports the OT loss on the whole source set before
    and after, on the same noise-level groups."""
    if options is None:
        options = StyleTrainingOptions(**knobs)
    elif knobs:
        raise TypeError(f"train_style: give the knobs in options or as keywords, not both ({sorted(knobs)})")
    o = options
    method = get_method(o.method).name
    if not 0.0 <= o.noise_start < o.noise_end <= 1.0 and not (o.levels == 1 and 0.0 <= o.noise_start <= 1.0):
        raise LineasError(f"need 0 <= noise_start < noise_end <= 1, got {o.noise_start}, {o.noise_end}")
    if target_images.shape[0] < 2 or source_images.shape[0] < 2:
        raise LineasError(f"need at least 2 target and 2 source images, got {target_images.shape[0]} and "
                          f"{source_images.shape[0]}")
    arch = architecture_of(model)
    if is_compiled(model):
        raise CompiledModelError(compiled_message("training") + "; train on the MODEL before TorchCompileModel")
    check_conditioning(conditioning, arch)
    percents = o.noise_percents()
    src = _noised_samples(model, encode_images(vae, source_images, model), percents, o.seed)
    tgt = _noised_samples(model, encode_images(vae, target_images, model), percents, o.seed + 1)
    patcher = training_clone(model)
    train_dtype = training_compute_dtype(patcher)
    if train_dtype is not None:
        patcher.set_model_compute_dtype(train_dtype)
    checkpointed = prepare_training(patcher, o.checkpointing)  # memory: checkpointing, load with a reserve
    cfg = o.train_config()
    chunk = min(num_samples(src), cfg.micro_batch_size or cfg.batch_size)

    def train_in_sampling(model_call, base):
        dm = base.diffusion_model
        device = patcher.load_device

        def forward(b):
            return model_call(b["x"].to(device), b["sigma"].to(device))

        with trainable_weights(dm):  # no second copy of the weights; the originals are back afterwards
            sites = choose_sites(dm, o.preset, o.regex)
            # two images at the same noise level: sites that see only the conditioning are left out of presets
            specs = probe_widths(dm, sites, lambda: forward(slice_samples(src, slice(0, 2))),
                                 drop_constant=PRESETS[o.preset] is not None)
            with inputs_copied(dm, sorted(set(specs) | set(_norm_modules(dm)))):
                run_cfg = cfg
                if get_method(method).iterative and not o.micro_batch:  # 0 = auto: free memory, one measured sample
                    run_cfg = replace(cfg, micro_batch_size=auto_micro_batch(dm, Steering(specs).to(device), forward,
                                                                             src, cfg.batch_size, device, patcher))
                memory["micro_batch"] = run_cfg.micro_batch_size
                steering, result = train(dm, specs, forward, src, tgt, method=method, config=run_cfg,
                                         on_step=on_step, device=device)
        return steering, result, dm, base.get_dtype(), base.manual_cast_dtype

    memory = {"gradient_checkpointing": checkpointed}
    latent_shape = (chunk,) + tuple(src["x"].shape[1:])
    with training_mode():  # newer ComfyUI: RoPE / fused kernels with autograd, as its own trainer sets it
        steering, result, dm, dtype, cast = run_in_sampling(patcher, conditioning, latent_shape, train_in_sampling,
                                                            seed=o.seed)
    record = SteeringRecord.from_training(steering, result, cfg, name=o.name,
                                          fingerprint=model_fingerprint(dm, arch),
                                          sites=len(steering.sites), noise_percents=percents,
                                          target_images=int(target_images.shape[0]),
                                          source_images=int(source_images.shape[0]), dtype=str(dtype),
                                          compute_dtype=str(train_dtype or cast or dtype), **memory)
    logger.info("trained %s (%s) on %d sites: loss %.4g -> %.4g", o.name, method, len(steering.sites),
                result.losses[0], result.losses[-1])
    return record, result
