"""A reduced-depth UNet with SD1.5 key names (ComfyUI's ``openaimodel.UNetModel``; model_channels 320 and
context_dim 768 are what ComfyUI's SD15 detection requires, the depths are measured from the keys),
trained unconditionally (cross-attention context all zeros, as ``ConditioningZeroOut`` gives) with SD1.5's
discrete eps-prediction schedule on precomputed VAE latents."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.diffusion.optim import EMA, adamw
from devtools.comfy_runtime import init_default_, require_comfy

log = logging.getLogger(__name__)

MODEL_CHANNELS, CONTEXT_DIM, CONTEXT_LEN, NUM_HEADS = 320, 768, 77, 8  # fixed by ComfyUI's SD15 config
TIMESTEPS, BETA_START, BETA_END = 1000, 0.00085, 0.012


def alphas_cumprod() -> torch.Tensor:
    """SD1.5 "scaled linear" betas (float64): linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@dataclass
class UNetConfig:
    channel_mult: list[int] = field(default_factory=lambda: [1])
    num_res_blocks: int = 1
    transformer_depth: int = 1  # per res block, input and output side
    middle: int = 1  # -2: no middle block, -1: one res block, >= 0: res + transformer(depth) + res
    steps: int = 3200
    batch: int = 32
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema: float = 0.999
    min_snr_gamma: float = 5.0  # loss weight min(SNR, gamma) / SNR (Hang et al. 2023); 0 = plain eps MSE
    bf16: bool = True  # bf16 autocast for the training forward (fp32 master weights, optimizer and EMA)
    log_every: int = 100

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "log_every"}

    def arch(self) -> dict:
        levels = len(self.channel_mult)
        return dict(image_size=32, in_channels=4, model_channels=MODEL_CHANNELS, out_channels=4,
                    num_res_blocks=[self.num_res_blocks] * levels, channel_mult=list(self.channel_mult),
                    num_heads=NUM_HEADS, use_spatial_transformer=True,
                    transformer_depth=[self.transformer_depth] * (levels * self.num_res_blocks),
                    transformer_depth_output=[self.transformer_depth] * (levels * (self.num_res_blocks + 1)),
                    transformer_depth_middle=self.middle, context_dim=CONTEXT_DIM, use_linear_in_transformer=False,
                    legacy=False)


ZERO_INIT = ("out_layers.3.", "proj_out.", "out.2.")  # last layer of each residual branch and the output conv


def build_unet(cfg: UNetConfig, seed: int):
    """ComfyUI's UNetModel with torch default init, residual-branch outputs zeroed (identity at start)."""
    require_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    model = UNetModel(**cfg.arch(), operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)
    init_default_(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.startswith(z) or f".{z}" in name for z in ZERO_INIT):
                p.zero_()
    return model


def zero_context(batch: int) -> torch.Tensor:
    return torch.zeros(batch, CONTEXT_LEN, CONTEXT_DIM)


def _loss(model, x0, t, noise, abar, gamma: float) -> torch.Tensor:
    a = abar[t].float().view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = model(xt, timesteps=t.float(), context=zero_context(x0.shape[0]))
    per = F.mse_loss(eps.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if gamma > 0:
        snr = abar[t] / (1 - abar[t])
        per = per * (snr.clamp(max=gamma) / snr).float()
    return per.mean()


@torch.no_grad()
def eval_loss(model, latents: torch.Tensor, seed: int = 1234, repeats: int = 2, batch: int = 64) -> float:
    """Plain eps MSE at fixed (t, noise) draws: comparable across runs and configs."""
    if latents.shape[0] == 0:
        return float("nan")
    abar = alphas_cumprod()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for i in range(0, latents.shape[0], batch):
            x0 = latents[i:i + batch]
            t = torch.randint(0, TIMESTEPS, (x0.shape[0],), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            total += _loss(model, x0, t, noise, abar, 0.0).item() * x0.shape[0]
            count += x0.shape[0]
    return total / count


def train_unet(latents: torch.Tensor, cfg: UNetConfig, seed: int = 0, eval_latents: torch.Tensor | None = None, *,
               resume: Path | None = None, key: str = "", save_every: int = 200, on_step=None):
    """latents: [N, 4, 8, 8] as the UNet sees them (already times 0.18215, ~unit std), augmentations
    included. Returns (EMA state dict, stats).

    ``resume``: a file where the whole training state (weights, EMA, AdamW moments, schedule, sampling RNG,
    loss curve) is written atomically every ``save_every`` steps, tagged with ``key``; a later call with the
    same file and key continues from it, to the same result as an uninterrupted run. The file is removed at
    the end. ``on_step(step)`` is called after each step (tests interrupt through it)."""
    model = build_unet(cfg, seed)
    abar = alphas_cumprod()
    n = latents.shape[0]

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        x0 = latents[torch.randint(0, n, (min(cfg.batch, n),), generator=gen)]
        t = torch.randint(0, TIMESTEPS, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        return _loss(model, x0, t, noise, abar, cfg.min_snr_gamma)

    ema, stats = run_training(model, cfg, seed, step_loss, name="unet", resume=resume, key=key,
                              save_every=save_every, on_step=on_step)
    if eval_latents is not None:
        model.load_state_dict(ema.shadow)
        stats["eval_eps_mse_ema"] = round(eval_loss(model, eval_latents), 5)
    return ema.state_dict(), stats


def run_training(model, cfg, seed: int, step_loss, *, name: str, resume: Path | None = None, key: str = "",
                 save_every: int = 200, on_step=None):
    """The loop both denoiser stages share (UNet, DiT): AdamW with warm-up + cosine, bf16 autocast when
    ``cfg.bf16``, gradient clipping at 1, EMA, a loss-curve entry every ``cfg.log_every`` steps, and the
    resumable state file (see ``train_unet``), removed at the end. ``step_loss(gen)`` draws one batch from
    ``gen`` and returns its loss. Returns (EMA, stats without evaluation)."""
    n_params = sum(p.numel() for p in model.parameters())
    opt, sched = adamw(model.parameters(), cfg.lr, cfg.steps, min(cfg.warmup, max(1, cfg.steps // 10)),
                       weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema)
    gen = torch.Generator().manual_seed(seed + 1)
    run = {"step": 0, "curve": [], "step_times": [], "elapsed": 0.0}
    if resume is not None and Path(resume).is_file():
        run = _load_state(Path(resume), key, model, ema, opt, sched, gen) or run
        if run["step"]:
            log.info("%s: resuming at step %d/%d from %s", name, run["step"], cfg.steps, resume)
    curve, step_times, window = run["curve"], run["step_times"], []
    t0 = time.perf_counter() - run["elapsed"]
    for step in range(run["step"], cfg.steps):
        t_step = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = step_loss(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        window.append(loss.item())
        step_times.append(time.perf_counter() - t_step)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.perf_counter() - t0
            curve.append([step + 1, round(sum(window) / len(window), 5)])
            window = []
            log.info("%s step %d/%d loss %.4f  %.3f s/step", name, step + 1, cfg.steps, curve[-1][1], el / (step + 1))
        if resume is not None and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            _save_state(Path(resume), key, step + 1, model, ema, opt, sched, gen,
                        {"curve": curve, "step_times": step_times, "elapsed": time.perf_counter() - t0})
        if on_step is not None:
            on_step(step + 1)
    seconds = time.perf_counter() - t0
    log.info("%s: %d steps in %.1f s (%d params)", name, cfg.steps, seconds, n_params)
    if resume is not None:
        Path(resume).unlink(missing_ok=True)
    stats = {"steps": cfg.steps, "batch": cfg.batch, "params": n_params, "seconds": round(seconds, 2),
             "s_per_step": round(seconds / max(1, cfg.steps), 4),
             "s_per_step_median": round(statistics.median(step_times), 4) if step_times else None, "loss_curve": curve}
    return ema, stats


def _save_state(path: Path, key: str, step: int, model, ema: EMA, opt, sched, gen, run: dict) -> None:
    """Every tensor of the training state in one safetensors file, the rest as JSON metadata."""
    from bench.diffusion.checkpoint import save_atomic

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.shadow.items()})
    osd = opt.state_dict()
    for i, st in osd["state"].items():
        tensors.update({f"opt.{i}.{name}": v.contiguous() for name, v in st.items()})
    tensors["gen"] = gen.get_state()
    sch = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    save_atomic(path, tensors, {"key": key, "step": step, "ema_updates": ema.updates,
                                "param_groups": osd["param_groups"], "sched": sch, **run})


def _load_state(path: Path, key: str, model, ema: EMA, opt, sched, gen) -> dict | None:
    """Restore what :func:`_save_state` wrote for ``key``; None (start afresh) for another key."""
    from bench.diffusion.checkpoint import load_tensors, read_meta

    meta = read_meta(path)
    if meta.get("key") != key:
        log.info("unet: ignoring %s (written for another configuration)", path)
        return None
    t = load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.shadow = {k[4:]: v.clone() for k, v in t.items() if k.startswith("ema.")}
    ema.updates = meta["ema_updates"]
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**meta["sched"], "lr_lambdas": [None] * len(opt.param_groups)})
    gen.set_state(t["gen"])
    return {k: meta[k] for k in ("step", "curve", "step_times", "elapsed")}
