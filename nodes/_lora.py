"""A steering as a LoRA-format file that ComfyUI's stock LoraLoader / LoraLoaderModelOnly apply.

Fold mode already computes new norm weights and biases that bake the steering in; their differences to
the model's own parameters are exactly what ComfyUI's LoRA loader reads as ``<key>.diff`` /
``<key>.diff_b`` (comfy/lora.py:72-82, key map comfy/lora.py:175-186: ``diffusion_model.<module>``).
The loader scales the differences by its strength, and a folded steering's differences are linear in the
steering strength, so LoRA strength s equals steering strength s. Sites that cannot be folded (a norm
without an affine, a shift without a bias) cannot be expressed this way: they are returned by name,
never dropped silently. Metadata follows the SAI model spec (``modelspec.*``) so LoRA managers can tell
what the file is."""

from __future__ import annotations

import base64
import copy
import io as _io
import json
from pathlib import Path

import torch

from ..lineas_engine import LineasError, SteeringRecord, folded_parameters, write_numbered

__all__ = ["MODELSPEC_ARCHITECTURES", "lora_state_dict", "lora_metadata", "save_lora", "thumbnail_data_uri"]

# ComfyUI's model config class -> the SAI model spec architecture id (ComfyUI itself writes the same ids
# for checkpoints, comfy_extras/nodes_model_merging.py:176-186)
MODELSPEC_ARCHITECTURES = {
    "SD15": "stable-diffusion-v1", "SD20": "stable-diffusion-v2-768-v", "SDXL": "stable-diffusion-xl-v1-base",
    "SDXLRefiner": "stable-diffusion-xl-v1-refiner", "SD3": "stable-diffusion-v3-medium", "Flux": "flux-1-dev",
    "FluxSchnell": "flux-1-schnell",
}


def _unpatched_sites(model, diffusion_model: torch.nn.Module, sites) -> torch.nn.Module:
    """A stand-in root that holds, under the sites' own names, shallow copies of the site modules with
    the model's unpatched weights. ComfyUI keeps the weight patches of the last loaded clone applied in
    place (the originals wait in ModelPatcher.backup, comfy/model_patcher.py:601-602 and 773-783), so the
    live parameters may already hold another steering or LoRA. Nothing of the model is modified."""
    backup = getattr(model, "backup", None) or {}
    root = torch.nn.Module()
    for site in sites:
        try:
            module = diffusion_model.get_submodule(site)
        except AttributeError:
            continue  # folded_parameters reports it as "not a module of this model"
        twin = copy.copy(module)
        twin._parameters = dict(module._parameters)  # a dict of its own: the model's stays as it is
        for kind, p in module._parameters.items():
            saved = backup.get(f"diffusion_model.{site}.{kind}")
            if p is not None and saved is not None:
                twin._parameters[kind] = saved.weight.to(device=p.device, dtype=p.dtype)
        parent = root
        *path, leaf = site.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, torch.nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, twin)
    return root


def lora_state_dict(model, record: SteeringRecord, strength: float = 1.0):
    """({"diffusion_model.<site>.diff": ..., ".diff_b": ...}, {site: reason} for sites left out), from
    the unpatched weights of ``model`` (a ComfyUI MODEL)."""
    root = _unpatched_sites(model, model.get_model_object("diffusion_model"), record.steering.sites)
    params, report = folded_parameters(root, record.steering, strength)
    sd: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, new in params.items():
            module, kind = name.rsplit(".", 1)
            old = root.get_submodule(module)._parameters[kind]
            suffix = {"weight": "diff", "bias": "diff_b"}[kind]
            sd[f"diffusion_model.{module}.{suffix}"] = (new.float() - old.float()).cpu().contiguous()
    return sd, dict(report.skipped)


def thumbnail_data_uri(image: torch.Tensor, size: int = 128) -> str:
    """First image of a ComfyUI IMAGE batch [B, H, W, C] as a small JPEG data URI (modelspec.thumbnail)."""
    from PIL import Image

    arr = (image[0, ..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    im.thumbnail((size, size))
    buf = _io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def lora_metadata(record: SteeringRecord, title: str, strength: float, skipped: dict[str, str],
                  thumbnail: str | None = None) -> dict[str, str]:
    arch = MODELSPEC_ARCHITECTURES.get(record.architecture, record.architecture.lower())
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": "sgm",
        "modelspec.title": title,
        "modelspec.description": (f"LinEAS style steering '{record.name}' folded into norm weights and biases at "
                                  f"strength {strength:g} (diff / diff_b keys; apply with LoraLoaderModelOnly)"),
        "lineas": json.dumps({"source": record.name, "architecture": record.architecture, "strength": strength,
                              "not_expressed": skipped, "training": record.training}, sort_keys=True, default=str),
    }
    if thumbnail:
        meta["modelspec.thumbnail"] = thumbnail
    return meta


def save_lora(folder: Path, name: str, model, record: SteeringRecord, strength: float = 1.0,
              thumbnail: str | None = None) -> tuple[Path, dict[str, str]]:
    """Write ``folder/<name>_NNNNN.safetensors`` atomically under the next free number, never over an
    existing file (also when another save takes that number meanwhile: ``write_numbered``). Returns the
    path and the sites left out (with the reason)."""
    from safetensors.torch import save as st_save

    sd, skipped = lora_state_dict(model, record, strength)
    if not sd:
        raise LineasError(f"no site of steering '{record.name}' can be folded into this model's weights "
                          f"({'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])}), so it has no "
                          "LoRA form; save it with LinEAS Save Steering and apply it with LinEAS Apply (hooks)")
    path = write_numbered(folder, name, lambda stem: st_save(
        sd, metadata=lora_metadata(record, stem, strength, skipped, thumbnail)))
    return path, skipped
