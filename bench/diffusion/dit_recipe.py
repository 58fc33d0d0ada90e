"""The DiT variant of the recipe (default ~/.cache/lineas/diffusion_dit): split -> 16-channel TAESD (Flux's
latent format) -> latents -> Flux DiT -> judge (on this VAE's round trips) -> ``dit_styles.safetensors`` (the
diffusion model alone, Flux's native key names, as UNETLoader reads it) + ``vae16.safetensors`` (TAESD keys,
as VAELoader / ``comfy.sd.VAE`` read them) -> report.json. Stages are cached by hash as in ``recipe.py``."""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.diffusion import checkpoint
from bench.diffusion import judge as judge_mod
from bench.diffusion.data import default_styles_root, fingerprint, list_items, load_styles
from bench.diffusion.dit import DiTConfig, train_dit
from bench.diffusion.recipe import _cached, _hash, augmented_train_images, write_report
from bench.diffusion.vae import FLUX, VAEConfig, build_taesd, roundtrip, to_latents, train_vae
from lineas_engine import cache_root

log = logging.getLogger(__name__)

FILES = {"vae": "vae16.safetensors", "latents": "latents16.safetensors", "dit": "dit_styles.safetensors",
         "judge": "judge.safetensors", "report": "report.json"}


def default_out() -> Path:
    return cache_root() / "diffusion_dit"


@dataclass
class DiTRecipeConfig:
    seed: int = 0
    styles: str = field(default_factory=lambda: str(default_styles_root()))
    size: int = 64
    aug_size: int = 72
    test_fraction: float = 0.25
    limit_per_class: int = 0
    latent_crops: int = 8
    judge_l2: float = 1e-2
    vae: VAEConfig = field(default_factory=lambda: VAEConfig(steps=1500))
    dit: DiTConfig = field(default_factory=DiTConfig)


def stage_keys(cfg: DiTRecipeConfig, data_fp: str) -> dict[str, str]:
    data = _hash(data_fp, cfg.size, cfg.aug_size, cfg.test_fraction, cfg.seed, cfg.limit_per_class)
    vae = _hash("vae16", data, cfg.vae.key(), cfg.seed)
    latents = _hash("latents16", vae, cfg.latent_crops, cfg.seed)
    return {"data": data, "vae": vae, "latents": latents, "dit": _hash("dit", latents, cfg.dit.key(), cfg.seed),
            "judge": _hash("judge16", vae, cfg.judge_l2)}


def run(cfg: DiTRecipeConfig, out: Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict = {"config": asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": platform.machine(), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
                    "stages": {}}
    root = Path(cfg.styles)
    keys = report["keys"] = stage_keys(cfg, fingerprint(list_items(root, cfg.limit_per_class)))
    data = load_styles(root, cfg.size, cfg.aug_size, cfg.test_fraction, cfg.seed, cfg.limit_per_class)
    report["split"] = data.summary()

    path = out / FILES["vae"]
    stats = _cached(path, keys["vae"])
    if stats is None:
        vae, stats = train_vae(data, cfg.vae, cfg.seed, FLUX)
        checkpoint.save_atomic(path, {k: v.contiguous() for k, v in vae.state_dict().items()},
                               {"key": keys["vae"], "stats": stats})
    else:
        vae = build_taesd(cfg.seed, FLUX.channels)
        vae.load_state_dict(checkpoint.load_tensors(path))
    report["stages"]["vae"] = stats
    vae.eval()

    path = out / FILES["latents"]
    stats = _cached(path, keys["latents"])
    if stats is None:
        t = time.perf_counter()
        lat_train = to_latents(vae, augmented_train_images(data, cfg.latent_crops, cfg.seed), fmt=FLUX)
        lat_test = to_latents(vae, data.x_test, fmt=FLUX)
        stats = {"n_train": lat_train.shape[0], "n_test": lat_test.shape[0],
                 "seconds": round(time.perf_counter() - t, 2), "mean": round(lat_train.mean().item(), 4),
                 "std": round(lat_train.std().item(), 4)}
        checkpoint.save_atomic(path, {"train": lat_train.contiguous(), "test": lat_test.contiguous()},
                               {"key": keys["latents"], "stats": stats})
    else:
        lat = checkpoint.load_tensors(path)
        lat_train, lat_test = lat["train"], lat["test"]
    report["stages"]["latents"] = stats

    path = out / FILES["dit"]
    stats = _cached(path, keys["dit"])
    if stats is None:
        sd, stats = train_dit(lat_train, cfg.dit, cfg.seed, eval_latents=lat_test,
                              resume=out / "dit.partial.safetensors", key=keys["dit"])
        stats = {**stats, "arch": cfg.dit.arch()}
        checkpoint.save_atomic(path, {k: v.float().contiguous() for k, v in sd.items()},
                               {"key": keys["dit"], "stats": stats})
    report["stages"]["dit"] = stats

    path = out / FILES["judge"]
    stats = _cached(path, keys["judge"])
    if stats is None:
        t = time.perf_counter()
        x_fit = roundtrip(vae, torch.cat([data.x_train, data.x_train.flip(-1)]), FLUX)
        y_fit = torch.cat([data.y_train, data.y_train])
        j = judge_mod.fit(x_fit, y_fit, l2=cfg.judge_l2)
        stats = {"seconds": round(time.perf_counter() - t, 2), "train_roundtrip": j.accuracy(x_fit, y_fit),
                 "test_roundtrip": j.accuracy(roundtrip(vae, data.x_test, FLUX), data.y_test),
                 "test_original": j.accuracy(data.x_test, data.y_test)}
        j.save(path, {"key": keys["judge"], "stats": stats})
    report["stages"]["judge"] = stats
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_report(out, report)
    return report
