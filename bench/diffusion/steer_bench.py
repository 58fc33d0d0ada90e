"""The style-steering benchmark, run through ComfyUI's own nodes in this process.

For each method (LinEAS and the layer-wise baseline), one ComfyUI graph generates the source (``source_n``
samples of the model, seed ``source_seed``) and feeds them with the target folder (illustrations of the
recipe's train split) to ``LineasTrainStyle``. A second graph per method loads the saved file with
``LineasLoad`` and samples ``eval_n`` images of seed ``eval_seed`` through ``LineasApply`` at each
strength. Every image is judged (photo / illustration) and compared with the strength-0 image of the
same seed (SSIM). Strength 0 is the unsteered model (the node pack's tests prove it bit-identical)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.diffusion import metrics
from bench.diffusion.data import STYLES, list_items, load_image, split_items
from bench.diffusion.sample import link_checkpoint, loader_nodes, read_images, sampler_nodes, save_png, tile
from devtools.graphs import apply_node, train_node
from lineas_engine import atomic_write_bytes, load_steering

log = logging.getLogger(__name__)

ILLUSTRATION = STYLES.index("illustration")
METHODS = ("lineas", "layer-wise")


@dataclass
class BenchConfig:
    ckpt: str
    judge: str
    styles: str
    test_fraction: float = 0.25  # the recipe's split: the target must come from its train part
    split_seed: int = 0
    source_n: int = 32
    source_seed: int = 1000
    target_n: int = 32
    eval_n: int = 128
    eval_seed: int = 0
    strengths: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
    sample_steps: int = 20
    train_steps: int = 150
    learning_rate: float = 0.01
    batch_size: int = 64
    noise_start: float = 0.0  # the steering acts at every sampling step: train it on the whole schedule
    noise_end: float = 1.0
    noise_levels: int = 8
    sites: str = "all norms"
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    size: int = 64
    extra: dict = field(default_factory=dict)


def target_folder(cfg: BenchConfig, folder: Path) -> list[str]:
    """Fill ``folder`` with ``target_n`` illustrations of the recipe's train split: the originals (linked),
    then, when the split has fewer, mirrored copies of the first ones (the recipe's own augmentation).
    Returns the names used."""
    from PIL import Image, ImageOps

    train, _ = split_items(list_items(Path(cfg.styles)), cfg.test_fraction, cfg.split_seed)
    illus = [it for it in train if it.label == ILLUSTRATION]
    if not illus:
        raise ValueError(f"no illustration in the train split of {cfg.styles}")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = []
    for i in range(cfg.target_n):
        it = illus[i % len(illus)]
        if i < len(illus):
            (folder / it.path.name).symlink_to(it.path.resolve())
            names.append(it.path.name)
        else:
            name = f"{it.path.stem}-mirrored{i // len(illus)}.png"
            with Image.open(it.path) as im:
                ImageOps.mirror(im.convert("RGB")).save(folder / name)
            names.append(name)
    return names


def train_graph(cfg: BenchConfig, ckpt_name: str, target: Path, method: str, name: str) -> dict:
    g = {**loader_nodes(ckpt_name),
         **sampler_nodes(["ckpt", 0], cfg.source_n, cfg.source_seed, cfg.sample_steps, cfg.size, tag="src")}
    g["save_src"] = {"class_type": "SaveImage", "inputs": {"images": ["dec_src", 0], "filename_prefix": f"{name}_src"}}
    g["train"] = train_node(str(target), source=["dec_src", 0], steps=cfg.train_steps, name=name, seed=cfg.seed,
                            learning_rate=cfg.learning_rate, sites=cfg.sites, noise_start=cfg.noise_start,
                            noise_end=cfg.noise_end, noise_levels=cfg.noise_levels, resolution=cfg.size,
                            batch_size=cfg.batch_size, method=method, conditioning=["zero", 0])
    g["loss"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 1], "filename_prefix": f"{name}_loss"}}
    return g


def eval_graph(cfg: BenchConfig, ckpt_name: str, steering_file: str, strengths, prefix: str) -> dict:
    g = {**loader_nodes(ckpt_name), "load": {"class_type": "LineasLoad", "inputs": {"steering_name": steering_file}}}
    for k, s in enumerate(strengths):
        g[f"apply_{k}"] = apply_node(["ckpt", 0], ["load", 0], float(s), mode="hooks")
        g.update(sampler_nodes([f"apply_{k}", 0], cfg.eval_n, cfg.eval_seed, cfg.sample_steps, cfg.size, tag=str(k)))
        g[f"save_{k}"] = {"class_type": "SaveImage", "inputs": {"images": [f"dec_{k}", 0],
                                                                 "filename_prefix": f"{prefix}_{k}"}}
    return g


def sweep_grid(per_strength: list[np.ndarray], rows: int) -> np.ndarray:
    """Rows = the first ``rows`` seeds, columns = strengths."""
    cols = len(per_strength)
    stacked = np.stack([per_strength[c][r] for r in range(rows) for c in range(cols)])
    return tile(stacked, cols=cols)


def run(cfg: BenchConfig, out: Path, comfy=None) -> dict:
    """Train each method through the nodes, sample every strength, judge and compare; writes
    ``out/results.json`` and the grids, returns the results."""
    from bench.diffusion.judge import Judge

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if comfy is None:
        from devtools.comfy_runtime import InProcessComfy

        comfy = InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-steer-bench-")), tiny_checkpoint=False)
    judge = Judge.load(Path(cfg.judge))
    ckpt_name = link_checkpoint(comfy, Path(cfg.ckpt))
    target = comfy.base / "input" / "lineas_bench_target"
    names = target_folder(cfg, target)
    save_png(tile(np.stack([load_image(f, cfg.size) for f in sorted(target.iterdir())]), cols=8), out / "target.png")
    strengths = sorted({0.0, *map(float, cfg.strengths)})
    run_tag = f"{os.getpid()}_{time.time_ns()}"
    res: dict = {"config": asdict(cfg), "target_images": names, "threads": torch.get_num_threads(), "methods": {}}
    reference = None
    for method in cfg.methods:
        name = f"bench_{method.replace('-', '')}_{run_tag}"
        t = time.perf_counter()
        before = set((comfy.output_dir / "lineas").glob("*.safetensors"))
        outputs = comfy.run(train_graph(cfg, ckpt_name, target, method, name))
        train_s = time.perf_counter() - t
        new = sorted(set((comfy.output_dir / "lineas").glob(f"{name}_*.safetensors")) - before)
        if len(new) != 1:
            raise RuntimeError(f"expected one new steering file for {name}, found {new}")
        shutil.copy2(new[0], out / f"steering_{method}.safetensors")
        _, meta = load_steering(new[0])
        source = read_images(comfy, outputs, "save_src")
        t = time.perf_counter()
        outputs = comfy.run(eval_graph(cfg, ckpt_name, new[0].name, strengths, f"{name}_eval"))
        sample_s = time.perf_counter() - t
        per = [read_images(comfy, outputs, f"save_{k}") for k in range(len(strengths))]
        if reference is None:
            reference = per[0]
            res["source"] = metrics.illustration_stats(judge.prob_illustration_uint8(source).numpy())
            save_png(tile(source[:32], cols=8), out / "source.png")
        elif not np.array_equal(per[0], reference):
            raise RuntimeError("strength-0 samples differ between methods: the unsteered model is not reproducible")
        curve = []
        for s, images in zip(strengths, per):
            row = {"strength": s, **metrics.illustration_stats(judge.prob_illustration_uint8(images).numpy()),
                   **metrics.faithfulness_stats(metrics.ssim_to_reference(images, reference))}
            curve.append(row)
            log.info("%s strength %.2f: illustration %.3f, SSIM %.3f", method, s, row["illustration_fraction"],
                     row["ssim_mean"])
        save_png(sweep_grid(per, rows=min(10, cfg.eval_n)), out / f"sweep_{method}.png")
        res["methods"][method] = {"curve": curve, "train_seconds": round(train_s, 1),
                                  "sample_seconds": round(sample_s, 1), "training": meta.training,
                                  "sites": len(meta.sites)}
    res["comparison"] = compare(res["methods"])
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1, default=float).encode())
    return res


def compare(methods: dict) -> dict:
    """The benchmark's targets: the rise of the illustration fraction from strength 0 to 1 for each method,
    and each method's SSIM at the illustration fraction the other reaches at strength 1."""
    out: dict = {}
    for m, r in methods.items():
        by = {p["strength"]: p for p in r["curve"]}
        if 0.0 in by and 1.0 in by:
            out[f"{m}_rise_points"] = 100 * (by[1.0]["illustration_fraction"] - by[0.0]["illustration_fraction"])
    if {"lineas", "layer-wise"} <= set(methods):
        lw1 = {p["strength"]: p for p in methods["layer-wise"]["curve"]}.get(1.0)
        li1 = {p["strength"]: p for p in methods["lineas"]["curve"]}.get(1.0)
        out["layerwise_ssim_at_lineas_points"] = [
            {"strength": p["strength"], "illustration_fraction": p["illustration_fraction"], "lineas_ssim": p["ssim_mean"],
             "layerwise_ssim": metrics.ssim_at_fraction(methods["layer-wise"]["curve"], p["illustration_fraction"])}
            for p in sorted(methods["lineas"]["curve"], key=lambda q: q["strength"])]
        if lw1 and li1:
            out["at_layerwise_strength1"] = {
                "illustration_fraction": lw1["illustration_fraction"], "layerwise_ssim": lw1["ssim_mean"],
                "lineas_ssim": metrics.ssim_at_fraction(methods["lineas"]["curve"], lw1["illustration_fraction"])}
            out["at_lineas_strength1"] = {
                "illustration_fraction": li1["illustration_fraction"], "lineas_ssim": li1["ssim_mean"],
                "layerwise_ssim": metrics.ssim_at_fraction(methods["layer-wise"]["curve"],
                                                           li1["illustration_fraction"])}
    return out


def markdown(res: dict) -> str:
    lines = ["| method | strength | judged illustration | mean p(illus.) | SSIM to strength 0 |", "|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        for p in r["curve"]:
            lines.append(f"| {m} | {p['strength']:.2f} | {100 * p['illustration_fraction']:.1f} ± "
                         f"{100 * p['illustration_se']:.1f}% | {p['p_mean']:.3f} | {p['ssim_mean']:.3f} ± "
                         f"{p['ssim_se']:.3f} |")
    return "\n".join(lines)
