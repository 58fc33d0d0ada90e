"""API-format prompt builders for the node tests (ComfyUI built-ins + our nodes)."""

from __future__ import annotations

CKPT = "tiny_sd15.safetensors"


def base_graph(seed: int = 1, batch: int = 2, steps: int = 3) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a picture"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "ks": sampler("ckpt", "empty", seed, steps),
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
    }


def sampler(model: str, latent: str, seed: int = 1, steps: int = 3, model_out: int = 0) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": [model, model_out], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": [latent, 0],
        "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}


def train_node(target_folder: str, source: list | None = None, source_folder: str = "", steps: int = 4,
               name: str = "style", seed: int = 0, **over) -> dict:
    inputs = {"model": ["ckpt", 0], "vae": ["ckpt", 2], "target_folder": target_folder,
              "source_folder": source_folder, "steps": steps, "learning_rate": 0.02, "optimizer": "adamw",
              "sparsity": 0.0, "sites": "all norms", "custom_regex": "", "noise_start": 0.2, "noise_end": 0.9,
              "noise_levels": 2, "resolution": 64, "resize": "crop", "batch_size": 8, "micro_batch": 0,
              "seed": seed, "name": name, "conditioning": ["neg", 0]}
    if source is not None:
        inputs["source_images"] = source
    inputs.update(over)
    return {"class_type": "LineasTrainStyle", "inputs": inputs}


def apply_node(model: list, steering: list, strength: float = 1.0, invert: bool = False, mode: str = "hooks",
               start: float = 0.0, end: float = 1.0) -> dict:
    return {"class_type": "LineasApply", "inputs": {"model": model, "steering": steering, "strength": strength,
                                                    "start_percent": start, "end_percent": end, "invert": invert,
                                                    "mode": mode}}


def save_image(images: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}
