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


def node_defaults(class_type: str) -> dict:
    """The widget defaults of a node's required inputs, as the node itself declares them (ComfyUI's
    INPUT_TYPES), so that graph builders never copy a node's input list. Needs a loaded ComfyUI."""
    import nodes

    spec = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = {}
    for name, value in spec.get("required", {}).items():
        opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
        if "default" in opts:
            out[name] = opts["default"]
        elif isinstance(value[0], list) and value[0]:  # a combo without a declared default: its first option
            out[name] = value[0][0]
    return out


# small and fast: 64 px images, 2 noise levels; everything else is the node's own default
SMALL_TRAINING = {"learning_rate": 0.02, "noise_start": 0.2, "noise_end": 0.9, "noise_levels": 2, "resolution": 64,
                  "batch_size": 8}


def train_node(target_folder: str, source: list | None = None, source_folder: str = "", steps: int = 4,
               name: str = "style", seed: int = 0, model: list | None = None, vae: list | None = None,
               conditioning: list | None = None, **over) -> dict:
    inputs = {**node_defaults("LineasTrainStyle"), **SMALL_TRAINING, "model": model or ["ckpt", 0],
              "vae": vae or ["ckpt", 2], "target_folder": target_folder, "source_folder": source_folder,
              "steps": steps, "seed": seed, "name": name, "conditioning": conditioning or ["neg", 0]}
    if source is not None:
        inputs["source_images"] = source
    inputs.update(over)
    return {"class_type": "LineasTrainStyle", "inputs": inputs}


def apply_node(model: list, steering: list, strength: float = 1.0, **over) -> dict:
    inputs = {**node_defaults("LineasApply"), "model": model, "steering": steering, "strength": strength}
    inputs.update(over)
    return {"class_type": "LineasApply", "inputs": inputs}


def save_image(images: list, prefix: str) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}
