"""The style-steering benchmark on the DiT (``dit_recipe``): do DiT QK norms belong in the steered sites?

The trained Flux DiT is loaded by UNETLoader's function (``comfy.sd.load_diffusion_model``; ComfyUI detects
FluxSchnell from the keys, and the harness sets the reduced width it cannot read, as for the architecture
matrix), its VAE by ``comfy.sd.VAE``. The pack's nodes and ComfyUI's KSampler / VAEDecode are called in this
process under inference mode as the executor calls them (there is no text encoder: the CONDITIONING is the
zero tokens and pooled vector the model was trained with, Flux's shapes). For each site preset
("all norms" leaves the QK norms out, "all norms + QK norms" keeps them), ``LineasTrainStyle`` learns from
the same 32 sources and 32 illustrations with the same settings; ``LineasApply`` then samples ``eval_n``
images of one seed at each strength. Judge and SSIM as in ``steer_bench``."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.diffusion import metrics
from bench.diffusion.data import load_image
from bench.diffusion.dit import CONFIG_CLASS, CONTEXT_DIM, POOLED_DIM, DiTConfig
from bench.diffusion.sample import save_png, tile
from bench.diffusion.steer_bench import BenchConfig, sweep_grid, target_folder
from lineas_engine import atomic_write_bytes

log = logging.getLogger(__name__)

PRESETS = ("all norms", "all norms + QK norms")


@dataclass
class DiTBenchConfig(BenchConfig):
    vae: str = ""
    presets: tuple[str, ...] = PRESETS
    regex: str = ""  # for the preset "custom regex" (e.g. only the QK norms: .*(query|key)_norm)
    scheduler: str = "simple"  # Flux's usual scheduler in ComfyUI workflows
    sampler: str = "euler"
    dit: dict = field(default_factory=dict)  # the DiTConfig the file was trained with (the recipe's report.json)


def _node(host, node_id: str, **inputs):
    from devtools.comfy_runtime import node_class

    cls = node_class(host.nodes, node_id, f"bench-{node_id}")
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return cls.EXECUTE_NORMALIZED(**inputs).args


def load_model(path: Path, dit: DiTConfig):
    from devtools.comfy_families import Family, load_file

    fam = Family("flux_styles", CONFIG_CLASS, dit.arch(), (dit.tokens, CONTEXT_DIM), POOLED_DIM)
    return load_file(fam, path, dit.arch(), "fp32")


def zero_conditioning(tokens: int) -> list:
    return [[torch.zeros(1, tokens, CONTEXT_DIM), {"pooled_output": torch.zeros(1, POOLED_DIM)}]]


def generate(host, model, vae, cond, n: int, seed: int, cfg: DiTBenchConfig) -> np.ndarray:
    """KSampler (cfg 1) from an empty 16-channel latent -> VAEDecode -> uint8 as SaveImage writes them."""
    latent = {"samples": torch.zeros(n, 16, cfg.size // 8, cfg.size // 8)}
    with torch.inference_mode():
        samples = host.nodes.KSampler().sample(model, seed, cfg.sample_steps, 1.0, cfg.sampler, cfg.scheduler,
                                                cond, cond, latent, 1.0)[0]
        images = host.nodes.VAEDecode().decode(vae, samples)[0]
    return np.clip(255.0 * images.float().cpu().numpy(), 0, 255).astype(np.uint8)


def config_from_recipe(folder: Path, **over) -> DiTBenchConfig:
    """The benchmark's config for a ``dit_recipe`` output folder (its files and the DiT's build config)."""
    from bench.diffusion.dit_recipe import FILES

    folder = Path(folder)
    report = json.loads((folder / FILES["report"]).read_text())
    return DiTBenchConfig(ckpt=str(folder / FILES["dit"]), judge=str(folder / FILES["judge"]),
                          vae=str(folder / FILES["vae"]), styles=report["config"]["styles"],
                          dit=report["config"]["dit"], **over)


def run(cfg: DiTBenchConfig, out: Path, host=None) -> dict:
    """``host``: an ``InProcessComfy`` to reuse (ComfyUI initialises once per process); else one is started."""
    from bench.diffusion.checkpoint import load_tensors
    from bench.diffusion.judge import Judge

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if host is None:
        from devtools.comfy_runtime import InProcessComfy

        host = InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-steer-dit-")), tiny_checkpoint=False)
    import comfy.sd as comfy_sd

    dit = DiTConfig(**cfg.dit)
    lf = load_model(Path(cfg.ckpt), dit)
    model = lf.model
    vae = comfy_sd.VAE(sd=load_tensors(Path(cfg.vae)))
    judge = Judge.load(Path(cfg.judge))
    cond = zero_conditioning(dit.tokens)
    with tempfile.TemporaryDirectory(prefix="lineas-dit-target-") as tmp:  # the recipe's train illustrations
        names = target_folder(cfg, Path(tmp) / "target")
        target_u8 = np.stack([load_image(f, cfg.size) for f in sorted((Path(tmp) / "target").iterdir())])
    save_png(tile(target_u8, cols=8), out / "target.png")
    target_images = torch.from_numpy(target_u8).float() / 255
    strengths = sorted({0.0, *map(float, cfg.strengths)})
    res: dict = {"config": asdict(cfg), "target_images": names, "threads": torch.get_num_threads(),
                 "detection_overrides": {k: list(v) for k, v in lf.overridden.items()}, "presets": {}}
    t = time.perf_counter()
    source = generate(host, model, vae, cond, cfg.source_n, cfg.source_seed, cfg)
    res["source_seconds"] = round(time.perf_counter() - t, 1)
    res["source"] = metrics.illustration_stats(judge.prob_illustration_uint8(source).numpy())
    save_png(tile(source[:32], cols=8), out / "source.png")
    source_images = torch.from_numpy(source).float() / 255
    reference = generate(host, model, vae, cond, cfg.eval_n, cfg.eval_seed, cfg)
    res["unsteered"] = metrics.illustration_stats(judge.prob_illustration_uint8(reference).numpy())
    for preset in cfg.presets:
        tag = preset.replace(" + ", "_").replace(" ", "_")
        name = f"dit_{tag}_{time.time_ns()}"
        lineas_dir = host.output_dir / "lineas"
        before = set(lineas_dir.glob("*.safetensors")) if lineas_dir.exists() else set()
        t = time.perf_counter()
        ref, _curve, summary = _node(
            host, "LineasTrainStyle", model=model, vae=vae, target_folder="", source_folder="",
            steps=cfg.train_steps, learning_rate=cfg.learning_rate, optimizer="adamw", sparsity=0.0, sites=preset,
            custom_regex=cfg.regex if preset == "custom regex" else "", noise_start=cfg.noise_start, noise_end=cfg.noise_end, noise_levels=cfg.noise_levels,
            resolution=cfg.size, resize="crop", batch_size=cfg.batch_size, micro_batch=0, seed=cfg.seed, name=name,
            method="lineas", target_images=target_images, source_images=source_images, conditioning=cond)
        train_s = time.perf_counter() - t
        new = sorted(set(lineas_dir.glob(f"{name}_*.safetensors")) - before)
        if len(new) != 1:
            raise RuntimeError(f"expected one new steering file for {name}, found {new}")
        shutil.copy2(new[0], out / f"steering_{tag}.safetensors")
        qk = [s for s in ref.steering.sites if "query_norm" in s or "key_norm" in s]
        t = time.perf_counter()
        per = []
        for s in strengths:
            steered = _node(host, "LineasApply", model=model, steering=ref, strength=s, start_percent=0.0,
                            end_percent=1.0, invert=False, mode="hooks")[0]
            per.append(generate(host, steered, vae, cond, cfg.eval_n, cfg.eval_seed, cfg))
        sample_s = time.perf_counter() - t
        if not np.array_equal(per[0], reference):
            raise RuntimeError("strength-0 samples differ from the unsteered model")
        curve = []
        for s, images in zip(strengths, per):
            row = {"strength": s, **metrics.illustration_stats(judge.prob_illustration_uint8(images).numpy()),
                   **metrics.faithfulness_stats(metrics.ssim_to_reference(images, reference))}
            curve.append(row)
            log.info("%s strength %.2f: illustration %.3f, SSIM %.3f", preset, s, row["illustration_fraction"],
                     row["ssim_mean"])
        save_png(sweep_grid(per, rows=min(10, cfg.eval_n)), out / f"sweep_{tag}.png")
        res["presets"][preset] = {"curve": curve, "train_seconds": round(train_s, 1),
                                  "sample_seconds": round(sample_s, 1), "sites": len(ref.steering.sites),
                                  "qk_sites": len(qk),
                                  "channels": sum(ref.steering.specs[s].dim for s in ref.steering.sites),
                                  "training": ref.training, "summary": summary if isinstance(summary, str) else None}
    res["comparison"] = compare(res["presets"])
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1, default=float).encode())
    return res


def compare(presets: dict) -> dict:
    """Rise of the illustration fraction from strength 0 to 1 per preset, and each preset's SSIM at the
    other's illustration fraction (faithfulness at equal style shift)."""
    out: dict = {}
    for p, r in presets.items():
        by = {q["strength"]: q for q in r["curve"]}
        out[p] = {"rise_points": 100 * (by[1.0]["illustration_fraction"] - by[0.0]["illustration_fraction"]),
                  "ssim_at_1": by[1.0]["ssim_mean"]}
    if len(presets) == 2:
        (a, ra), (b, rb) = presets.items()
        for x, rx, y, ry in ((a, ra, b, rb), (b, rb, a, ra)):
            f = {q["strength"]: q for q in rx["curve"]}[1.0]["illustration_fraction"]
            out[x][f"{y}_ssim_at_this_fraction"] = metrics.ssim_at_fraction(ry["curve"], f)
    return out


def markdown(res: dict) -> str:
    lines = ["| sites | strength | judged illustration | mean p(illus.) | SSIM to strength 0 |", "|---|---|---|---|---|"]
    for m, r in res["presets"].items():
        for p in r["curve"]:
            lines.append(f"| {m} | {p['strength']:.2f} | {100 * p['illustration_fraction']:.1f} ± "
                         f"{100 * p['illustration_se']:.1f}% | {p['p_mean']:.3f} | {p['ssim_mean']:.3f} ± "
                         f"{p['ssim_se']:.3f} |")
    return "\n".join(lines)
