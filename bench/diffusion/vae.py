"""A TAESD-format autoencoder (ComfyUI's ``comfy.taesd.taesd.TAESD``, so a checkpoint's
``first_stage_model.taesd_decoder.1.weight`` makes ComfyUI build exactly this model), trained from scratch
on the 64 px style images: 3x64x64 -> 4x8x8 latents (SD1.5's latent format), or 16x8x8 for a Flux-format model
(``LatentFormat``; the DiT benchmark, ``dit.py``).

Scaling, as ComfyUI applies it: ``TAESD.encode(x) = encoder(x01) / vae_scale + vae_shift`` and
``decode(z) = decoder((z - vae_shift) * vae_scale)``, and the model's latent format maps VAE latents to what the
diffusion model sees with ``(z - shift) * scale`` (SD1.5: shift 0, scale 0.18215; Flux: 0.1159, 0.3611). ``calibrate_``
sets the two buffers so the latents the model sees are the raw encoder outputs standardised: zero mean, unit std."""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from bench.diffusion.data import StyleData, augment
from bench.diffusion.optim import adamw
from devtools.comfy_runtime import init_default_, require_comfy

log = logging.getLogger(__name__)

SD15_SCALE = 0.18215  # ComfyUI latent_formats.SD15.scale_factor


@dataclass(frozen=True)
class LatentFormat:
    """ComfyUI's ``latent_formats.*``: channels, and ``process_in(z) = (z - shift) * scale``."""

    channels: int
    scale: float
    shift: float = 0.0


SD15 = LatentFormat(4, SD15_SCALE)
FLUX = LatentFormat(16, 0.3611, 0.1159)  # latent_formats.Flux


@dataclass
class VAEConfig:
    steps: int = 2000
    batch: int = 16
    lr: float = 5e-4
    warmup: int = 100
    l1: float = 0.0  # weight of an extra L1 reconstruction term
    latent_reg: float = 0.1  # pulls each latent channel towards mean 0, std 1 (balanced channels)
    latent_noise: float = 0.1  # Gaussian noise on the latents before decoding: a smoother decoder
    bf16: bool = True  # bf16 autocast for the training forward (weights, optimizer, calibration stay fp32)
    log_every: int = 100

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "log_every"}


def build_taesd(seed: int, channels: int = 4):
    require_comfy()
    from comfy.taesd.taesd import TAESD

    torch.manual_seed(seed)
    model = TAESD(latent_channels=channels)
    init_default_(model)
    with torch.no_grad():
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
    return model


def _loss(model, x: torch.Tensor, cfg: VAEConfig, gen: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    z = model.taesd_encoder(x)
    if gen is not None and cfg.latent_noise > 0:
        z_in = z + cfg.latent_noise * torch.randn(z.shape, generator=gen)
    else:
        z_in = z
    rec = model.taesd_decoder(z_in)
    z, rec = z.float(), rec.float()
    mse = F.mse_loss(rec, x)
    loss = mse
    if cfg.l1:
        loss = loss + cfg.l1 * (rec - x).abs().mean()
    reg = (z.mean(dim=(0, 2, 3)) ** 2 + (z.std(dim=(0, 2, 3)) - 1) ** 2).mean()
    if cfg.latent_reg:
        loss = loss + cfg.latent_reg * reg
    return loss, {"mse": mse.item(), "reg": reg.item()}


def train_vae(data: StyleData, cfg: VAEConfig, seed: int = 0, fmt: LatentFormat = SD15):
    """Returns (calibrated TAESD, stats). Deterministic for a seed and a thread count."""
    model = build_taesd(seed, fmt.channels).to(memory_format=torch.channels_last)  # faster CPU convolutions
    params = [p for n, p in model.named_parameters() if n not in ("vae_scale", "vae_shift")]
    opt, sched = adamw(params, cfg.lr, cfg.steps, min(cfg.warmup, max(1, cfg.steps // 10)))
    gen = torch.Generator().manual_seed(seed + 1)
    n = data.big_train.shape[0]
    size = data.x_train.shape[-1]
    curve, window, step_times, t0 = [], [], [], time.perf_counter()
    for step in range(cfg.steps):
        t_step = time.perf_counter()
        idx = torch.randint(0, n, (min(cfg.batch, n),), generator=gen)
        x = augment(data.big_train[idx], size, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, parts = _loss(model, x, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step_times.append(time.perf_counter() - t_step)
        window.append(parts["mse"])
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t0
            curve.append([step + 1, round(sum(window) / len(window), 6)])  # mean train MSE since the last entry
            window = []
            log.info("vae step %d/%d mse %.5f reg %.4f  %.3f s/step", step + 1, cfg.steps, curve[-1][1], parts["reg"],
                     el / (step + 1))
    seconds = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format)
    raw = encode_raw(model, torch.cat([data.x_train, data.x_train.flip(-1)]))
    calibrate_(model, raw, fmt)
    stats = {"steps": cfg.steps, "batch": cfg.batch, "seconds": round(seconds, 2),
             "s_per_step": round(seconds / max(1, cfg.steps), 4),
             "s_per_step_median": round(statistics.median(step_times), 4) if step_times else None, "mse_curve": curve,
             "raw_latent_mean": raw.mean().item(), "raw_latent_std": raw.std().item(),
             "raw_channel_std": [round(v, 4) for v in raw.std(dim=(0, 2, 3)).tolist()],
             "train": evaluate(model, data.x_train, fmt), "test": evaluate(model, data.x_test, fmt)}
    log.info("vae: %d steps in %.1f s; test mse %.5f psnr %.2f dB", cfg.steps, seconds, stats["test"]["mse"],
             stats["test"]["psnr"])
    return model, stats


@torch.no_grad()
def encode_raw(model, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Encoder outputs before any scaling; x01 [N, 3, H, W] in 0..1."""
    return torch.cat([model.taesd_encoder(x01[i:i + batch]) for i in range(0, x01.shape[0], batch)])


def calibrate_(model, raw: torch.Tensor, fmt: LatentFormat = SD15) -> None:
    """Set vae_scale / vae_shift so ``(encode(x) - fmt.shift) * fmt.scale == (raw - mean) / std``; decode
    inverts it."""
    m, s = raw.mean().item(), raw.std().item()
    with torch.no_grad():
        model.vae_scale.fill_(fmt.scale * s)
        model.vae_shift.fill_(fmt.shift - m / (s * fmt.scale))


@torch.no_grad()
def to_latents(model, x01: torch.Tensor, batch: int = 64, fmt: LatentFormat = SD15) -> torch.Tensor:
    """What the diffusion model sees for images x01 [N, 3, H, W] (ComfyUI: VAEEncode then process_in)."""
    return torch.cat([(model.encode(x01[i:i + batch] * 2 - 1) - fmt.shift) * fmt.scale
                      for i in range(0, x01.shape[0], batch)])


@torch.no_grad()
def to_images(model, latents: torch.Tensor, batch: int = 64, fmt: LatentFormat = SD15) -> torch.Tensor:
    """Inverse of ``to_latents`` (ComfyUI: process_out then VAEDecode); [N, 3, H, W] in 0..1."""
    out = [model.decode(latents[i:i + batch] / fmt.scale + fmt.shift).add(1).div(2).clamp(0, 1)
           for i in range(0, latents.shape[0], batch)]
    return torch.cat(out)


@torch.no_grad()
def roundtrip(model, x01: torch.Tensor, fmt: LatentFormat = SD15) -> torch.Tensor:
    return to_images(model, to_latents(model, x01, fmt=fmt), fmt=fmt)


@torch.no_grad()
def evaluate(model, x01: torch.Tensor, fmt: LatentFormat = SD15) -> dict:
    if x01.shape[0] == 0:
        return {"mse": float("nan"), "psnr": float("nan")}
    mse = F.mse_loss(roundtrip(model, x01, fmt), x01).item()
    return {"mse": round(mse, 6), "psnr": round(10 * math.log10(1 / max(mse, 1e-12)), 3)}
