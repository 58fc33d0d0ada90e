"""The pack's in-UI help, written for a ComfyUI user: a description for every node and a tooltip for every
input and output, filled into a node's io.Schema by ``documented(schema)`` (a tooltip written in the
schema itself wins). The longer help pages are web/docs/<node_id>.md, which ComfyUI's frontend shows in
its node help panel (WEB_DIRECTORY, see the pack's __init__.py)."""

from __future__ import annotations

DESCRIPTIONS = {
    "LineasTrainStyle": (
        "Learn a style steering: small per-channel scale-and-shift maps on the diffusion model's norm layers, "
        "trained so that the model's activations on your SOURCE images (usually its own generations) look like "
        "its activations on your TARGET style images. Saves the result to output/lineas/<name>_NNNNN.safetensors "
        "and outputs it, with a loss curve and a summary. Copy the file to models/lineas to load it later."),
    "LineasApply": (
        "Apply a LinEAS steering to a model: returns a patched copy (the input model is untouched). Connect "
        "the output MODEL to a KSampler. strength 0 = unchanged, 1 = the trained style; stack several."),
    "LineasLoad": (
        "Load a steering file from models/lineas (or output/lineas, where training saves). Press R in the "
        "browser to refresh the list after a new file appears."),
    "LineasSave": (
        "Save a steering (e.g. a combined one) to output/lineas/<name>_NNNNN.safetensors; never overwrites."),
    "LineasCombine": (
        "Combine two steerings into one exact steering: the second applied after the first, each at its own "
        "strength. Equal to stacking two LinEAS Apply nodes."),
    "LineasInspect": (
        "Show where a steering acts: a bar plot per site (how much it changes each layer, and its support) "
        "and a text listing."),
    "LineasSaveLora": (
        "Save a steering as a LoRA-format file (output/loras/<name>_NNNNN.safetensors) that ComfyUI's own "
        "Load LoRA (model only) node applies, with no LinEAS node needed. Layers whose map cannot be written "
        "as weight differences are listed in the not_expressed output, never dropped silently."),
}

_MODEL = "the diffusion model (from Load Checkpoint or any model loader)"
TOOLTIPS: dict[str, dict[str, str]] = {
    "LineasTrainStyle": {
        "model": _MODEL + "; it is never modified",
        "vae": "the VAE of the same checkpoint; it encodes the training images",
        "target_folder": "folder of STYLE images (the look you want), absolute or inside ComfyUI's input "
                         "folder, e.g. lineas_targets/illustration; ignored when target_images is connected",
        "source_folder": "folder of SOURCE images (what the model makes now); usually leave empty and connect "
                         "the model's own generations to source_images instead",
        "steps": "optimisation steps; more = closer fit, longer training",
        "learning_rate": "step size of the optimiser (0.01 suits adamw)",
        "optimizer": "adamw (default), adam, or sgd (the paper's LLM setting, needs a larger learning rate)",
        "sparsity": "0 = every layer may change; larger values keep only the layers that matter most "
                    "(sparse group lasso strength)",
        "sites": "which layers get a map: all norm layers, only the ResNet or the transformer norms, or your own regex",
        "custom_regex": "regular expression on layer names; narrows the preset, or is the whole choice with "
                        "'custom regex'",
        "noise_start": "lowest noise level used in training, as a fraction of the sampling schedule",
        "noise_end": "highest noise level used in training, as a fraction of the sampling schedule",
        "noise_levels": "how many noise levels between noise_start and noise_end; each image is seen at each level",
        "resolution": "images are centre-cropped and resized to this square size before encoding",
        "resize": "crop: centre crop then resize; stretch: resize without keeping the aspect; none: images "
                  "must already be resolution x resolution",
        "batch_size": "source samples per optimisation step (compared with all target samples)",
        "micro_batch": "run each batch in chunks of this size to save memory (same result); 0 = all at once",
        "seed": "seed of the training noise and sample order; the same seed and inputs give the same file",
        "name": "file name prefix: saved as output/lineas/<name>_00001.safetensors (letters, digits, _ - . and spaces)",
        "method": "lineas: the paper's end-to-end training; layer-wise: a closed-form per-layer baseline, "
                  "for comparison",
        "target_images": "IMAGE batch of style images; used instead of target_folder when connected",
        "source_images": "IMAGE batch of source images, e.g. the model's own generations from a KSampler + VAE Decode",
        "conditioning": "optional prompt conditioning used while training (default: an empty, all-zero one)",
        "STEERING": "the trained steering: connect to LinEAS Apply, Save, Save as LoRA, Combine or Inspect",
        "loss_curve": "plot of the training loss (it should go down)",
        "summary": "text: sites, loss before and after, image counts and the saved file name",
    },
    "LineasApply": {
        "model": _MODEL + "; a patched copy is returned, this one is untouched",
        "steering": "the steering to apply (from LinEAS Load, Train, or Combine)",
        "strength": "0 = no change, 1 = the trained map, between = part of the way, above 1 = exaggerated, "
                    "negative = push away from the style",
        "start_percent": "start applying at this fraction of the sampling schedule (0 = from the first step)",
        "end_percent": "stop applying at this fraction of the sampling schedule (1 = until the last step)",
        "invert": "apply the inverse map (for a steering trained to remove a concept, this adds it back)",
        "mode": "hooks: works everywhere, any start/end; fold: baked into the norm weights, no extra cost, "
                "whole schedule only",
        "MODEL": "the steered model: connect to a KSampler",
    },
    "LineasLoad": {
        "steering_name": "a .safetensors file in models/lineas or output/lineas (press R to refresh the list)",
        "STEERING": "the loaded steering",
        "info": "text: number of sites and parameters, support, and the model family it was made for",
    },
    "LineasSave": {
        "steering": "the steering to save",
        "name": "file name prefix: saved as output/lineas/<name>_00001.safetensors; never overwrites",
        "filename": "the saved file's name",
    },
    "LineasCombine": {
        "first": "the steering applied first",
        "second": "the steering applied after the first",
        "first_strength": "strength of the first steering (as in LinEAS Apply)",
        "second_strength": "strength of the second steering (as in LinEAS Apply)",
        "STEERING": "one steering equal to the second applied after the first",
    },
    "LineasInspect": {
        "steering": "the steering to look at",
        "plot": "bar plot: per site, how much it changes the activations (blue) and its support (grey)",
        "text": "per-site listing: width, support, mean |scale - 1|, mean |shift|",
    },
    "LineasSaveLora": {
        "model": "the model the steering was trained on; its norm weights are needed to write the differences",
        "steering": "the steering to export",
        "name": "file name prefix: saved as output/loras/<name>_00001.safetensors; never overwrites",
        "strength": "the steering strength baked into the file; the LoRA loader's strength then scales it "
                    "(LoRA strength 1 = this strength)",
        "thumbnail": "optional image stored as the file's preview (modelspec.thumbnail), e.g. a styled sample",
        "lora_name": "the file name to pick in Load LoRA (model only)",
        "not_expressed": "layers the file does not contain (none, or each one with the reason); apply those "
                         "with LinEAS Apply",
    },
}


def _output_key(out) -> str:
    return out.display_name or out.id or out.io_type


def documented(schema):
    """Set the description (when empty) and the input/output tooltips of a node's io.Schema from the
    tables above; returns the schema."""
    texts = TOOLTIPS.get(schema.node_id, {})
    if not schema.description:
        schema.description = DESCRIPTIONS.get(schema.node_id, "")
    for inp in schema.inputs or []:
        if inp.id in texts:
            inp.tooltip = texts[inp.id]
    for out in schema.outputs or []:
        if _output_key(out) in texts:
            out.tooltip = texts[_output_key(out)]
    return schema
