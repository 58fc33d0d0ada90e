"""Generate images from a checkpoint through ComfyUI's ordinary nodes, in this process
(CheckpointLoaderSimple, CLIPTextEncode "" + ConditioningZeroOut, EmptyLatentImage, KSampler, VAEDecode,
SaveImage), and tile them into one grid PNG."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def loader_nodes(ckpt_name: str) -> dict:
    """API-format nodes: the checkpoint and the zeroed conditioning (``zero``) every sampler here uses."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "text": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["text", 0]}},
    }


def sampler_nodes(model: list, n: int, seed: int, steps: int, size: int = 64, tag: str = "gen",
                  sampler: str = "euler", scheduler: str = "normal", cfg: float = 1.0) -> dict:
    """``empty_<tag>`` -> ``ks_<tag>`` (``model``, zeroed conditioning) -> ``dec_<tag>``: n unconditional
    samples of one seed (image i is fixed by seed and i). Needs :func:`loader_nodes` in the same graph."""
    return {
        f"empty_{tag}": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": n}},
        f"ks_{tag}": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["zero", 0], "negative": ["zero", 0], "latent_image": [f"empty_{tag}", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": scheduler,
            "denoise": 1.0}},
        f"dec_{tag}": {"class_type": "VAEDecode", "inputs": {"samples": [f"ks_{tag}", 0], "vae": ["ckpt", 2]}},
    }


def graph(ckpt_name: str, n: int, seed: int, steps: int, size: int = 64, prefix: str = "lineas_styles") -> dict:
    """API-format prompt: n unconditional samples of the checkpoint, saved by node ``save``."""
    return {**loader_nodes(ckpt_name), **sampler_nodes(["ckpt", 0], n, seed, steps, size),
            "save": {"class_type": "SaveImage", "inputs": {"images": ["dec_gen", 0], "filename_prefix": prefix}}}


def read_images(comfy, outputs: dict, node: str) -> np.ndarray:
    """The images a SaveImage node wrote, [N, H, W, 3] uint8."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(comfy.output_dir / im.get("subfolder", "") / im["filename"]).convert("RGB"))
                     for im in outputs[node]["images"]])


def link_checkpoint(comfy, ckpt: Path) -> str:
    """Symlink ``ckpt`` into ComfyUI's checkpoints folder under a name that changes with the file, so
    ComfyUI's node cache never serves an older model of the same path; returns that name."""
    ckpt = Path(ckpt).resolve()
    st = ckpt.stat()
    tag = hashlib.sha256(f"{ckpt}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]
    name = f"{ckpt.stem}-{tag}{ckpt.suffix}"
    link = comfy.base / "models" / "checkpoints" / name
    if not link.exists():
        link.symlink_to(ckpt)
    return name


def tile(images: np.ndarray, cols: int = 0) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one grid image (2 px gaps, white)."""
    n, h, w, c = images.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (h + 2) - 2, cols * (w + 2) - 2, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = im
    return grid


def generate(ckpt: Path, n: int = 16, seed: int = 0, steps: int = 20, comfy=None, size: int = 64) -> np.ndarray:
    """n images [n, size, size, 3] uint8 from ``ckpt`` through ComfyUI's nodes. ``comfy``: an
    ``InProcessComfy`` to reuse (ComfyUI initialises once per process); else one is started."""
    if comfy is None:
        from devtools.comfy_runtime import InProcessComfy

        comfy = InProcessComfy(Path(tempfile.mkdtemp(prefix="lineas-diffusion-")), tiny_checkpoint=False)
    name = link_checkpoint(comfy, ckpt)
    t = time.perf_counter()
    prefix = f"lineas_styles_{os.getpid()}_{time.time_ns()}"
    outputs = comfy.run(graph(name, n, seed, steps, size, prefix=prefix))
    images = read_images(comfy, outputs, "save")
    log.info("sampled %d images (%d steps) in %.1f s", n, steps, time.perf_counter() - t)
    return images


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    from lineas_engine import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def sample_grid(ckpt: Path, out_png: Path, n: int = 16, seed: int = 0, steps: int = 20, comfy=None,
                judge_path: Path | None = None) -> dict:
    """``generate`` + one grid PNG (written atomically); with a judge file, also p(illustration) per image."""
    t = time.perf_counter()
    images = generate(ckpt, n=n, seed=seed, steps=steps, comfy=comfy)
    save_png(tile(images), out_png)
    res = {"n": n, "seed": seed, "steps": steps, "grid": str(out_png), "seconds": round(time.perf_counter() - t, 2)}
    if judge_path is not None and Path(judge_path).is_file():
        from bench.diffusion.judge import Judge

        p = Judge.load(judge_path).prob_illustration_uint8(images)
        res["p_illustration"] = [round(v, 3) for v in p.tolist()]
        res["judged_illustration_fraction"] = round((p > 0.5).float().mean().item(), 3)
    return res
