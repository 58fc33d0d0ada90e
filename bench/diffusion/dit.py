"""A reduced Flux DiT (ComfyUI's own ``comfy.ldm.flux.model.Flux``, built by ``supported_models.FluxSchnell``:
double- and single-stream blocks with Flux's QK RMSNorms, rotary positions, 2x2 patches of 16-channel
latents), trained unconditionally (text tokens and pooled vector all zeros, as a ConditioningZeroOut gives)
with rectified flow on precomputed 16-channel VAE latents, in Flux's own parametrisation: ComfyUI's
``ModelSamplingFlux`` (shift 1, schnell's) feeds the model ``x_t = (1 - s) x0 + s noise`` with timestep ``s``
and takes ``x_t - s * out`` as the clean estimate, so the model learns ``out = noise - x0``.

It exists to measure on the style benchmark whether DiT QK norms belong in the steered sites."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.diffusion.unet import run_training
from devtools.comfy_runtime import init_default_, require_comfy

log = logging.getLogger(__name__)

CONTEXT_DIM, POOLED_DIM = 4096, 768  # Flux's T5-XXL tokens and CLIP-L pooled vector
CONFIG_CLASS = "FluxSchnell"


@dataclass
class DiTConfig:
    hidden: int = 256  # a multiple of 128 (Flux's head width; axes_dim 16+56+56)
    depth: int = 2  # double-stream blocks
    single: int = 4  # single-stream blocks
    tokens: int = 8  # zero text tokens in training and sampling (their count changes the attention)
    steps: int = 3000
    batch: int = 32
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema: float = 0.999
    logit_normal: bool = True  # timesteps ~ sigmoid(N(0, 1)) as SD3 / Flux are trained; else uniform
    bf16: bool = True
    log_every: int = 100

    def key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "log_every"}

    def arch(self) -> dict:
        """The unet_config ComfyUI's FluxSchnell builds the model from (detection sets hidden 3072 / 24
        heads for Flux whatever the file holds: the load sets these back, see ``load_model``)."""
        from devtools.comfy_families import with_current_keys

        return with_current_keys("flux_schnell", {
            "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16,
            "vec_in_dim": POOLED_DIM, "context_in_dim": CONTEXT_DIM, "hidden_size": self.hidden,
            "mlp_ratio": 4.0, "num_heads": self.hidden // 128, "depth": self.depth,
            "depth_single_blocks": self.single, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
            "guidance_embed": False})


ZERO_INIT = (".img_attn.proj.", ".txt_attn.proj.", ".img_mlp.2.", ".txt_mlp.2.", ".linear2.", "final_layer.linear.")


def build_dit(cfg: DiTConfig, seed: int):
    """ComfyUI's Flux module: torch default init, RMSNorm scales 1, residual-branch outputs and the final
    projection zeroed (each block starts as the identity)."""
    require_comfy()
    import comfy.supported_models as sm

    mc = getattr(sm, CONFIG_CLASS)(cfg.arch())
    mc.set_inference_dtype(torch.float32, None)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        dm = mc.get_model({}, "").diffusion_model
    init_default_(dm)
    with torch.no_grad():
        for name, p in dm.named_parameters():
            # RMSNorm scales: ``.scale`` in older ComfyUI, ``.weight`` of a torch RMSNorm in newer trees
            owner = dm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else dm
            if name.endswith(".scale") or (isinstance(owner, torch.nn.RMSNorm) and name.endswith(".weight")):
                p.fill_(1.0)
            if any(z in f".{name}" for z in ZERO_INIT):
                p.zero_()
    return dm.requires_grad_(True)  # newer ComfyUI ops make their parameters with requires_grad=False


def _copy_norm_inputs(dm) -> list:
    """Flux updates its residual streams in place (``x += ...``) after a LayerNorm saved them for backward;
    a forward pre-hook gives each LayerNorm a copy (training only; handles are removed after)."""

    def pre(_m, args):
        return tuple(a.clone() if torch.is_tensor(a) else a for a in args)

    return [m.register_forward_pre_hook(pre) for m in dm.modules() if isinstance(m, torch.nn.LayerNorm)]


def zero_text(batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(batch, tokens, CONTEXT_DIM), torch.zeros(batch, POOLED_DIM)


def _loss(dm, x0, s, noise, tokens: int) -> torch.Tensor:
    import comfy.model_management as mm

    sv = s.view(-1, 1, 1, 1)
    xt = (1 - sv) * x0 + sv * noise
    ctx, y = zero_text(x0.shape[0], tokens)
    # newer ComfyUI runs RoPE through kernels without autograd unless in_training is set (as its trainer does)
    previous = getattr(mm, "in_training", None)
    if previous is not None:
        mm.in_training = torch.is_grad_enabled()
    try:
        out = dm(xt, s, ctx, y=y)
    finally:
        if previous is not None:
            mm.in_training = previous
    return F.mse_loss(out.float(), noise - x0)


def _draw_sigma(n: int, gen: torch.Generator, logit_normal: bool) -> torch.Tensor:
    if logit_normal:
        return torch.sigmoid(torch.randn(n, generator=gen))
    return torch.rand(n, generator=gen)


@torch.no_grad()
def eval_loss(dm, latents: torch.Tensor, tokens: int, seed: int = 1234, repeats: int = 2, batch: int = 64) -> float:
    """Velocity MSE at fixed uniform (sigma, noise) draws: comparable across runs and configs."""
    if latents.shape[0] == 0:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for i in range(0, latents.shape[0], batch):
            x0 = latents[i:i + batch]
            s = torch.rand(x0.shape[0], generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            total += _loss(dm, x0, s, noise, tokens).item() * x0.shape[0]
            count += x0.shape[0]
    return total / count


def train_dit(latents: torch.Tensor, cfg: DiTConfig, seed: int = 0, eval_latents: torch.Tensor | None = None, *,
              resume: Path | None = None, key: str = "", save_every: int = 200):
    """latents: [N, 16, 8, 8] as the model sees them (process_in applied, ~unit std). Returns (EMA state
    dict with Flux's key names, stats). Resumable as ``train_unet`` (same state file format)."""
    dm = build_dit(cfg, seed)
    n = latents.shape[0]

    def step_loss(gen: torch.Generator) -> torch.Tensor:
        x0 = latents[torch.randint(0, n, (min(cfg.batch, n),), generator=gen)]
        s = _draw_sigma(x0.shape[0], gen, cfg.logit_normal)
        noise = torch.randn(x0.shape, generator=gen)
        return _loss(dm, x0, s, noise, cfg.tokens)

    handles = _copy_norm_inputs(dm)
    try:
        ema, stats = run_training(dm, cfg, seed, step_loss, name="dit", resume=resume, key=key,
                                  save_every=save_every)
    finally:
        for h in handles:
            h.remove()
    if eval_latents is not None:
        dm.load_state_dict(ema.shadow)
        stats["eval_v_mse_ema"] = round(eval_loss(dm, eval_latents, cfg.tokens), 5)
    return ema.state_dict(), stats
