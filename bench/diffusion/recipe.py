"""The whole recipe, stage by stage, into one output folder (default ~/.cache/lineas/diffusion; never in
the repo): split -> VAE -> latents -> UNet -> judge -> checkpoint -> report.json. Each stage's file holds
the hash of everything it depends on (config, upstream stages, the image files), so a re-run skips what
is cached and up to date and redoes the rest. All writes are atomic."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from bench.diffusion import checkpoint
from bench.diffusion import judge as judge_mod
from bench.diffusion.data import StyleData, augment, default_styles_root, fingerprint, list_items, load_styles
from bench.diffusion.unet import UNetConfig, train_unet
from bench.diffusion.vae import VAEConfig, build_taesd, roundtrip, to_latents, train_vae
from lineas_engine import cache_root

log = logging.getLogger(__name__)

CKPT_NAME = "lineas_styles64.safetensors"
FILES = {"vae": "vae.safetensors", "latents": "latents.safetensors", "unet": "unet.safetensors",
         "judge": "judge.safetensors", "checkpoint": CKPT_NAME, "report": "report.json"}


def default_out() -> Path:
    return cache_root() / "diffusion"


@dataclass
class RecipeConfig:
    seed: int = 0
    styles: str = field(default_factory=lambda: str(default_styles_root()))
    size: int = 64
    aug_size: int = 72  # random 64 px crops of a 72 px resize (and flips) augment training
    test_fraction: float = 0.25
    limit_per_class: int = 0  # >0: first N images of each folder only (tests)
    latent_crops: int = 8  # random crops per train image in the precomputed latents, besides the centre one
    judge_l2: float = 1e-2
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(cfg: RecipeConfig, data_fp: str) -> dict[str, str]:
    data = _hash(data_fp, cfg.size, cfg.aug_size, cfg.test_fraction, cfg.seed, cfg.limit_per_class)
    vae = _hash("vae", data, cfg.vae.key(), cfg.seed)
    latents = _hash("latents", vae, cfg.latent_crops, cfg.seed)
    unet = _hash("unet", latents, cfg.unet.key(), cfg.seed)
    judge = _hash("judge", vae, cfg.judge_l2)
    return {"data": data, "vae": vae, "latents": latents, "unet": unet, "judge": judge,
            "checkpoint": _hash("checkpoint", vae, unet, cfg.seed)}


def _cached(path: Path, key: str) -> dict | None:
    """The stored stats when ``path`` exists and was written for ``key``."""
    meta = checkpoint.read_meta(path) if path.is_file() else {}
    return meta.get("stats", {}) if meta.get("key") == key else None


def augmented_train_images(data: StyleData, crops: int, seed: int) -> torch.Tensor:
    """The centre 64 px images and their flips, plus ``crops`` random crop/flip draws of each."""
    gen = torch.Generator().manual_seed(seed + 7)
    parts = [data.x_train, data.x_train.flip(-1)]
    parts += [augment(data.big_train, data.x_train.shape[-1], gen) for _ in range(crops)]
    return torch.cat(parts)


def run(cfg: RecipeConfig, out: Path) -> dict:
    """Run (or reuse) every stage; returns the report (also written to ``out/report.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict = {"config": asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "machine": platform.machine(), "loadavg_start": [round(v, 2) for v in os.getloadavg()],
                    "stages": {}}
    root = Path(cfg.styles)
    keys = stage_keys(cfg, fingerprint(list_items(root, cfg.limit_per_class)))
    report["keys"] = keys
    data = load_styles(root, cfg.size, cfg.aug_size, cfg.test_fraction, cfg.seed, cfg.limit_per_class)
    report["split"] = data.summary()

    # VAE
    path = out / FILES["vae"]
    stats = _cached(path, keys["vae"])
    if stats is None:
        vae, stats = train_vae(data, cfg.vae, cfg.seed)
        checkpoint.save_atomic(path, {k: v.contiguous() for k, v in vae.state_dict().items()},
                               {"key": keys["vae"], "stats": stats})
        report["stages"]["vae"] = {**stats, "cached": False}
    else:
        vae = build_taesd(cfg.seed)
        vae.load_state_dict(checkpoint.load_tensors(path))
        report["stages"]["vae"] = {**stats, "cached": True}
    vae.eval()

    # latents (what the UNet sees), train with augmentation, test without
    path = out / FILES["latents"]
    stats = _cached(path, keys["latents"])
    if stats is None:
        t = time.perf_counter()
        lat_train = to_latents(vae, augmented_train_images(data, cfg.latent_crops, cfg.seed))
        lat_test = to_latents(vae, data.x_test)
        stats = {"n_train": lat_train.shape[0], "n_test": lat_test.shape[0],
                 "seconds": round(time.perf_counter() - t, 2), "mean": round(lat_train.mean().item(), 4),
                 "std": round(lat_train.std().item(), 4)}
        checkpoint.save_atomic(path, {"train": lat_train.contiguous(), "test": lat_test.contiguous()},
                               {"key": keys["latents"], "stats": stats})
        report["stages"]["latents"] = {**stats, "cached": False}
    else:
        lat = checkpoint.load_tensors(path)
        lat_train, lat_test = lat["train"], lat["test"]
        report["stages"]["latents"] = {**stats, "cached": True}
    log.info("latents: train %s test %s, mean %.3f std %.3f", tuple(lat_train.shape), tuple(lat_test.shape),
             lat_train.mean().item(), lat_train.std().item())

    # UNet
    path = out / FILES["unet"]
    stats = _cached(path, keys["unet"])
    if stats is None:
        unet_sd, stats = train_unet(lat_train, cfg.unet, cfg.seed, eval_latents=lat_test,  # resumable
                                    resume=out / "unet.partial.safetensors", key=keys["unet"])
        checkpoint.save_atomic(path, {k: v.contiguous() for k, v in unet_sd.items()}, {"key": keys["unet"],
                                                                                       "stats": stats})
        report["stages"]["unet"] = {**stats, "cached": False}
    else:
        unet_sd = checkpoint.load_tensors(path)
        report["stages"]["unet"] = {**stats, "cached": True}

    # judge, on VAE round trips so generated samples are in its domain
    path = out / FILES["judge"]
    stats = _cached(path, keys["judge"])
    if stats is None:
        t = time.perf_counter()
        x_fit = roundtrip(vae, torch.cat([data.x_train, data.x_train.flip(-1)]))
        j = judge_mod.fit(x_fit, torch.cat([data.y_train, data.y_train]), l2=cfg.judge_l2)
        stats = {"seconds": round(time.perf_counter() - t, 2),
                 "train_roundtrip": j.accuracy(x_fit, torch.cat([data.y_train, data.y_train])),
                 "test_roundtrip": j.accuracy(roundtrip(vae, data.x_test), data.y_test),
                 "test_original": j.accuracy(data.x_test, data.y_test)}
        j.save(path, {"key": keys["judge"], "stats": stats})
        report["stages"]["judge"] = {**stats, "cached": False}
    else:
        report["stages"]["judge"] = {**stats, "cached": True}
    log.info("judge: test accuracy %s (round trip), %s (original)", stats["test_roundtrip"], stats["test_original"])

    # the checkpoint
    path = out / FILES["checkpoint"]
    stats = _cached(path, keys["checkpoint"])
    if stats is None:
        t = time.perf_counter()
        tensors = checkpoint.build(unet_sd, vae.state_dict(), cfg.seed)
        stats = {"unet": cfg.unet.arch(), "vae_scale": vae.vae_scale.item(), "vae_shift": vae.vae_shift.item(),
                 "tensors": len(tensors)}
        about = "LinEAS bench: unconditional 64 px photo/illustration model, SD1.5 format"
        checkpoint.save_atomic(path, tensors, {"key": keys["checkpoint"], "stats": stats, "about": about})
        stats = {**stats, "seconds": round(time.perf_counter() - t, 2)}
        report["stages"]["checkpoint"] = {**stats, "cached": False}
    else:
        report["stages"]["checkpoint"] = {**stats, "cached": True}
    report["stages"]["checkpoint"]["bytes"] = path.stat().st_size

    report["seconds"] = round(time.perf_counter() - t_start, 2)  # this invocation (cached stages cost ~0)
    report["stage_seconds_total"] = round(sum(st.get("seconds", 0.0) for st in report["stages"].values()), 2)
    report["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_report(out, report)
    return report


def write_report(out: Path, report: dict) -> Path:
    from lineas_engine import atomic_write_bytes

    return atomic_write_bytes(Path(out) / FILES["report"],
                              (json.dumps(report, indent=1, sort_keys=True, default=str) + "\n").encode())
