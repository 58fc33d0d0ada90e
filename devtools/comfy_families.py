"""Every model family ComfyUI detects, built small: a diffusion model of ComfyUI's own class
(``comfy.supported_models.*`` -> ``model_base.*`` -> ``comfy.ldm.*``) at a chosen width and depth with random
weights, written to a .safetensors file with the family's real key names, loaded back through ComfyUI's
own UNETLoader function (``comfy.sd.load_diffusion_model``, with UNETLoader's ``weight_dtype`` options), a
small VAE of the family's latent channels, and a CONDITIONING of the family's real shapes.

Used by the architecture matrix tests (tests/nodes/test_arch_matrix.py) and the benchmarks. Must run
where ComfyUI is importable (devtools.comfy_runtime.import_comfy first).

Detection: ComfyUI detects the family from the file's keys. Some detectors hard-code widths or depths of
the released models (Flux / Chroma hidden 3072, Lumina2 2304, HiDream 16+32 blocks, Qwen-Image's class
default of 24 heads, SDXL's exact transformer depths); a reduced model of those families cannot be
described by its keys alone. For them, the load runs ComfyUI's detection unchanged and then replaces,
in the detected config only, the keys our build differs in (``LoadedFamily.overridden`` lists them;
empty at the families' real widths). The family class, the dtype choice, manual casting, fp8, the
weight loading and the ModelPatcher are ComfyUI's own.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["with_current_keys", "Family", "FAMILIES", "LoadedFamily", "build_state_dict", "write_family", "load_family",
           "load_file", "make_conditioning", "make_vae", "WEIGHT_DTYPES"]

# UNETLoader's weight_dtype choices (nodes.py UNETLoader.load_unet) as model_options
WEIGHT_DTYPES = {"default": {}, "fp32": {"dtype": torch.float32}, "bf16": {"dtype": torch.bfloat16},
                 "fp16": {"dtype": torch.float16}, "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn}}


@dataclass(frozen=True)
class Family:
    """One family: ComfyUI's model config class name, the unet_config of the small build, the
    CONDITIONING it needs (cross-attention tokens x width, pooled width, extra cond keys), its latent
    channels and whether it is a video model (5-D latents)."""

    name: str
    config_class: str
    unet_config: dict
    context: tuple[int, int]
    pooled: int | None = None
    extra_cond: dict = field(default_factory=dict)
    latent_channels: int = 16
    video: bool = False
    real_width: dict = field(default_factory=dict)  # unet_config keys that give the released width

    def config(self, real_width: bool = False) -> dict:
        cfg = copy.deepcopy(self.unet_config)
        if real_width:
            cfg.update(copy.deepcopy(self.real_width))
        return with_current_keys(self.name, cfg)


# Keys that newer ComfyUI's params dataclasses require (0.33: FluxParams.txt_ids_dims, ChromaParams.vec_in_dim,
# HunyuanVideoParams.meanflow_sum, ...) with the value its detection gives the released models
# (comfy/model_detection.py); added only when the installed ComfyUI's dataclass declares them.
_NEW_KEYS = {"txt_ids_dims": [], "vec_in_dim": None, "use_cond_type_embedding": False, "vision_in_dim": None,
             "meanflow_sum": False}
_PARAMS = {"flux_dev": ("comfy.ldm.flux.model", "FluxParams"), "flux_schnell": ("comfy.ldm.flux.model", "FluxParams"),
           "chroma": ("comfy.ldm.chroma.model", "ChromaParams"),
           "hunyuan_video": ("comfy.ldm.hunyuan_video.model", "HunyuanVideoParams")}


def with_current_keys(name: str, cfg: dict) -> dict:
    import dataclasses
    import importlib

    if name not in _PARAMS:
        return cfg
    module, cls = _PARAMS[name]
    try:
        params = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return cfg
    for f in dataclasses.fields(params):
        if f.name in _NEW_KEYS and f.name not in cfg and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            cfg[f.name] = copy.deepcopy(_NEW_KEYS[f.name])
    return cfg


def _unet(context_dim, adm, channel_mult, tdepth, linear, heads=-1, head_ch=64) -> dict:
    levels = len(channel_mult)
    return {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1] * levels,
            "channel_mult": list(channel_mult), "transformer_depth": list(tdepth),
            "transformer_depth_output": [d for d in tdepth for _ in range(2)],
            "transformer_depth_middle": max(tdepth[-1], 0) if tdepth[-1] else -2,
            "context_dim": context_dim, "use_linear_in_transformer": linear, "adm_in_channels": adm,
            "num_classes": "sequential" if adm else None, "num_heads": heads, "num_head_channels": head_ch,
            "use_temporal_attention": False, "use_temporal_resblock": False, "disable_self_attentions": None,
            "num_attention_blocks": None, "attn_precision": None}


def _flux(hidden: int, guidance: bool) -> dict:
    return {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
            "context_in_dim": 4096, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": hidden // 128,
            "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
            "guidance_embed": guidance}


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("sd15", "SD15", {**_unet(768, None, [1], [1], False, heads=8, head_ch=-1)}, (77, 768), 768,
           latent_channels=4),
    Family("sdxl", "SDXL", _unet(2048, 2816, [1], [1], True), (77, 2048), 1280, latent_channels=4),
    Family("sd35", "SD3", {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
                           "adm_in_channels": 2048,
                           "context_embedder_config": {"target": "torch.nn.Linear",
                                                       "params": {"in_features": 4096, "out_features": 128}},
                           "num_patches": 9216, "pos_embed_max_size": 96, "qk_norm": "rms",
                           "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0]},
           (154, 4096), 2048),
    Family("flux_dev", "Flux", _flux(256, True), (16, 4096), 768, {"guidance": 3.5},
           real_width={"hidden_size": 3072, "num_heads": 24}),
    Family("flux_schnell", "FluxSchnell", _flux(256, False), (16, 4096), 768,
           real_width={"hidden_size": 3072, "num_heads": 24}),
    Family("chroma", "Chroma", {"image_model": "chroma", "in_channels": 64, "patch_size": 2, "out_channels": 64,
                                "context_in_dim": 4096, "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 2,
                                "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000,
                                "qkv_bias": True, "in_dim": 64, "out_dim": 256, "hidden_dim": 512, "n_layers": 2},
           (16, 4096), None, real_width={"hidden_size": 3072, "num_heads": 24, "out_dim": 3072,
                                         "hidden_dim": 5120, "n_layers": 5}),
    Family("qwen_image", "QwenImage", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1,
                                       "num_attention_heads": 2},
           (16, 3584), None, real_width={"num_attention_heads": 24}),
    Family("lumina2", "Lumina2", {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 384,
                                  "cap_feat_dim": 2304, "n_layers": 1, "n_refiner_layers": 1, "n_heads": 4,
                                  "n_kv_heads": 2, "qk_norm": True, "axes_dims": [32, 32, 32],
                                  "axes_lens": [300, 512, 512]},
           (16, 2304), None, {"attention_mask": True}, real_width={"dim": 2304, "n_heads": 24, "n_kv_heads": 8,
                                                                   "n_refiner_layers": 2}),
    Family("hidream", "HiDream", {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
                                  "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
                                  "llama_layers": [0, 1], "num_attention_heads": 2, "num_routed_experts": 4,
                                  "num_activated_experts": 2, "num_layers": 1, "num_single_layers": 1,
                                  "out_channels": 16, "patch_size": 2, "text_emb_dim": 2048},
           (16, 4096), 2048, {"conditioning_llama3": (32, 16, 4096)}),
    Family("wan21", "WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 256, "out_dim": 16,
                                  "num_heads": 2, "ffn_dim": 512, "num_layers": 1, "patch_size": (1, 2, 2),
                                  "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
                                  "eps": 1e-6, "in_dim": 16},
           (32, 4096), None, video=True, real_width={"dim": 1536, "num_heads": 12, "ffn_dim": 8960}),
    Family("wan22", "WAN22_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 256, "out_dim": 48,
                                  "num_heads": 2, "ffn_dim": 512, "num_layers": 1, "patch_size": (1, 2, 2),
                                  "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
                                  "eps": 1e-6, "in_dim": 48},
           (32, 4096), None, latent_channels=48, video=True,
           real_width={"dim": 3072, "num_heads": 24, "ffn_dim": 14336}),
    Family("hunyuan_video", "HunyuanVideo", {"image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2],
                                             "out_channels": 16, "vec_in_dim": 768, "axes_dim": [16, 56, 56],
                                             "meanflow": False, "context_in_dim": 4096, "hidden_size": 256,
                                             "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                                             "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True},
           (16, 4096), 768, {"guidance": 6.0}, video=True, real_width={"hidden_size": 3072, "num_heads": 24}),
]}


@dataclass
class LoadedFamily:
    family: Family
    model: object            # comfy.model_patcher.ModelPatcher, as UNETLoader returns it
    path: Path
    overridden: dict         # detected config keys replaced by the build's (empty: detection alone sufficed)


def _init_(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights: 1-D norm-like parameters near 1, other 1-D near 0, matrices ~ 1/sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1].lower()
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
            elif leaf in ("scale", "weight", "gamma") and "norm" in name.lower() or leaf == "gamma":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        for _name, b in module.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()


def _config_class(family: Family):
    import comfy.supported_models

    return getattr(comfy.supported_models, family.config_class)


def build_state_dict(family: Family, real_width: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """The family's diffusion model (ComfyUI's classes) with random weights, as its state dict with the
    key names a released checkpoint of this family has in ComfyUI's native format."""
    cfg_cls = _config_class(family)
    mc = cfg_cls(family.config(real_width))
    mc.set_inference_dtype(torch.float32, None)
    with torch.device("cpu"):
        base = mc.get_model({}, "")
    dm = base.diffusion_model
    _init_(dm, torch.Generator().manual_seed(seed))
    return {k: v.detach().float().contiguous() for k, v in dm.state_dict().items()}


def write_family(family: Family, folder: Path, real_width: bool = False, seed: int = 0) -> Path:
    """Write (once; cached by name) the family's .safetensors file in ``folder``; atomic."""
    from safetensors.torch import save_file

    path = Path(folder) / f"lineas_test_{family.name}{'_real' if real_width else ''}_s{seed}.safetensors"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(build_state_dict(family, real_width, seed), str(tmp))
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _build_config_after_detection(family: Family, build: dict, record: dict):
    """While loading: ComfyUI's own ``model_config_from_unet`` runs first; the keys our reduced build
    differs in are then set in the detected config (recorded in ``record``)."""
    import comfy.model_detection as md

    original = md.model_config_from_unet
    cfg_cls = _config_class(family)

    def detect(state_dict, prefix, *args, **kwargs):
        mc = original(state_dict, prefix, *args, **kwargs)
        if mc is None:  # reduced depths outside the class's match table (e.g. SDXL): ComfyUI's measured config
            mc = cfg_cls(md.detect_unet_config(state_dict, prefix))
            record["config_class"] = (None, family.config_class)
        elif not isinstance(mc, cfg_cls):
            raise RuntimeError(f"ComfyUI detected {type(mc).__name__}, expected {family.config_class}")
        for k, v in build.items():
            if k not in mc.unet_config and v is None:
                continue
            if k not in mc.unet_config or mc.unet_config[k] != v:
                record[k] = (mc.unet_config.get(k), v)
                mc.unet_config[k] = v
        return mc

    md.model_config_from_unet = detect
    try:
        yield
    finally:
        md.model_config_from_unet = original


def load_family(family: Family | str, folder: Path, weight_dtype: str = "default", real_width: bool = False,
                seed: int = 0) -> LoadedFamily:
    """Write the family's file (cached) and load it with UNETLoader's function and weight_dtype option."""

    fam = FAMILIES[family] if isinstance(family, str) else family
    return load_file(fam, write_family(fam, folder, real_width, seed), fam.config(real_width), weight_dtype)


def load_file(fam: Family, path: Path, build: dict, weight_dtype: str = "default") -> LoadedFamily:
    """Load a diffusion-model file of ``fam`` with UNETLoader's function; ``build``: the unet_config it was
    built with (the keys detection cannot read from the file are set from it)."""
    import comfy.sd

    record: dict = {}
    # under inference mode, as ComfyUI's executor runs the UNETLoader node: the weights are inference tensors
    with torch.inference_mode(), _build_config_after_detection(fam, build, record):
        model = comfy.sd.load_diffusion_model(str(path), model_options=dict(WEIGHT_DTYPES[weight_dtype]))
    if type(model.model.model_config).__name__ != fam.config_class:
        raise RuntimeError(f"{Path(path).name} loaded as {type(model.model.model_config).__name__}, "
                           f"not {fam.config_class}")
    return LoadedFamily(fam, model, Path(path), record)


def make_conditioning(family: Family | str, seed: int = 0, tokens: int | None = None, width: int | None = None):
    """A CONDITIONING ([[cross_attn, {pooled_output, ...}]]) with the family's real widths (random values,
    as a text encoder of that family would give them); ``width`` overrides the cross-attention width
    (e.g. to make a wrong-family conditioning)."""
    fam = FAMILIES[family] if isinstance(family, str) else family
    gen = torch.Generator().manual_seed(seed)
    t, d = fam.context
    t = tokens or t
    cross = torch.randn(1, t, width or d, generator=gen)
    extra: dict = {"pooled_output": torch.randn(1, fam.pooled, generator=gen) if fam.pooled else None}
    for k, v in fam.extra_cond.items():
        if k == "attention_mask":
            extra[k] = torch.ones(1, t, dtype=torch.long)
        elif isinstance(v, tuple):
            extra[k] = torch.randn(1, *v[:1], t, *v[2:], generator=gen)
        else:
            extra[k] = v
    return [[cross, extra]]


def make_vae(latent_channels: int, seed: int = 0):
    """A small VAE ComfyUI builds from its keys: TAESD (comfy.taesd) with the family's latent channels,
    random weights scaled so a random model's latents stay out of tanh saturation."""
    import comfy.sd
    from comfy.taesd.taesd import TAESD

    vae = TAESD(latent_channels=latent_channels)
    _init_(vae, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        vae.vae_scale.fill_(1 / 16)
        vae.vae_shift.fill_(0.0)
    return comfy.sd.VAE(sd={k: v.float() for k, v in vae.state_dict().items()})
