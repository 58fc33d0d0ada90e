"""The pack's in-UI help, written for a ComfyUI user: the description of every node and the tooltip of every
input and output. This module is their only source: the node schemas carry none, and ``documented(schema)``
fills them in (tests/nodes/test_help_truth.py checks that each text is here and only here, and that the
help pages name every required input). The longer help pages are web/docs/<node_id>.md, which ComfyUI's
frontend shows in its node help panel (WEB_DIRECTORY, see the pack's __init__.py).

A tooltip is a string, or a function returning one where the text lists choices that are registered at
run time (the training methods, the checkpointing modes)."""

from __future__ import annotations

from typing import Callable, Union

Text = Union[str, Callable[[], str]]

DESCRIPTIONS = {
    "LineasTrainStyle": (
        "Learn a style steering: small per-channel scale-and-shift maps on the diffusion model's norm layers "
        "(or the layers a regex picks), trained so that the model's activations on your SOURCE images (usually "
        "its own generations) look like its activations on your TARGET style images, under the CONDITIONING "
        "you connect (a neutral prompt). Saves the result to output/lineas/<name>_NNNNN.safetensors and "
        "outputs it, with a loss curve and a summary. LinEAS Load lists output/lineas too; copy the file to "
        "models/lineas to keep it with your models."),
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


def _methods() -> str:
    from ..lineas_engine import METHODS

    return "; ".join(f"{k}: {m.description}" for k, m in METHODS.items())


def _checkpointing() -> str:
    from ._memory import CHECKPOINTING

    return "; ".join(f"{k}: {v}" for k, v in CHECKPOINTING.items())


_MODEL = "the diffusion model (from Load Checkpoint or any model loader)"
TOOLTIPS: dict[str, dict[str, Text]] = {
    "LineasTrainStyle": {
        "model": _MODEL + "; training runs on a clone and leaves this one as it was",
        "vae": "the VAE of the same checkpoint; it encodes the training images",
        "target_folder": "folder of STYLE images (the look you want), absolute or inside ComfyUI's input "
                         "folder, e.g. lineas_targets/illustration; ignored when target_images is connected",
        "source_folder": "folder of SOURCE images (what the model makes now); usually leave empty and connect "
                         "the model's own generations to source_images instead",
        "steps": "optimisation steps; more = closer fit, longer training (unused by layer-wise)",
        "learning_rate": "step size of the optimiser (0.01 suits adamw; unused by layer-wise)",
        "optimizer": "adamw (default), adam, or sgd (the paper's LLM setting, needs a larger learning rate)",
        "sparsity": "strength of the sparse group lasso: 0 = dense, every channel of every layer may change; "
                    "larger values leave more layers and channels unchanged, keeping the ones that matter most",
        "sites": "which layers get a map: all norm layers (DiT QK norms left out), only the ResNet or the "
                 "transformer norms, all norms with the QK norms, or your own regex",
        "custom_regex": "regular expression matched against whole layer names; narrows the preset, or is the "
                        "whole choice with 'custom regex'",
        "noise_start": "where the training noise levels begin, as a fraction of the sampling schedule: "
                       "0 = pure noise (the first sampling step), 1 = the clean image",
        "noise_end": "where the training noise levels end, as a fraction of the sampling schedule "
                     "(1 = the clean image, no noise); must be above noise_start unless noise_levels is 1",
        "noise_levels": "how many noise levels, evenly spaced from noise_start to noise_end (1 = noise_start "
                        "only); each image is seen at each level",
        "resolution": "the square size (pixels) the images are brought to before encoding; 0 = the model "
                      "family's native size (512 for SD1.5, 768 for SD2, 1024 for SDXL / SD3 / Flux and "
                      "most DiTs)",
        "resize": "crop: centre crop then resize; stretch: resize without keeping the aspect; none: images "
                  "must already be resolution x resolution",
        "batch_size": "source samples (image x noise level) per optimisation step, each batch compared with "
                      "all target samples",
        "micro_batch": "run each batch in chunks of this many samples to bound memory (the same gradient); "
                       "0 = auto: one sample is measured, and the whole batch runs at once if its activations "
                       "fit in the free memory, else the largest chunk that fits",
        "seed": "seed of the training noise and the sample order; it stays fixed after a Run, so pressing Run "
                "again does not retrain",
        "name": "file name prefix: saved as output/lineas/<name>_00001.safetensors (letters, digits, _ - . and spaces)",
        "method": _methods,
        "target_images": "IMAGE batch of style images; used instead of target_folder when connected",
        "source_images": "IMAGE batch of source images, e.g. the model's own generations from a KSampler + VAE Decode",
        "conditioning": "the conditioning every training forward runs under: a CLIPTextEncode made with this "
                        "model's own text encoder (+ FluxGuidance for Flux dev), of the prompt the source images "
                        "come from or of a neutral or empty prompt; zeros are not the empty prompt, and most "
                        "families need more than a text tensor",
        "gradient_checkpointing": _checkpointing,
        "STEERING": "the trained steering: connect to LinEAS Apply, Save, Save as LoRA, Combine or Inspect",
        "loss_curve": "plot of the training loss per step (it should go down); layer-wise: before and after",
        "summary": "text: sites, loss at the first and last step, image counts and the saved file name",
    },
    "LineasApply": {
        "model": _MODEL + "; a patched copy is returned, this one is untouched",
        "steering": "the steering to apply (from LinEAS Load, Train, or Combine)",
        "strength": "0 = no change, 1 = the trained map, between = part of the way, above 1 = exaggerated, "
                    "negative = push away from the style",
        "start_percent": "start applying at this fraction of the sampling schedule (0 = from the first step)",
        "end_percent": "stop applying at this fraction of the sampling schedule (1 = until the last step)",
        "invert": "apply the inverse map (for a steering trained to remove a concept, this adds it back)",
        "mode": "hooks: works on every site, any start/end; fold: baked into the norm weights, no extra cost, "
                "whole schedule only (sites without weights to fold stay hooks, named in report)",
        "MODEL": "the steered model: connect to a KSampler",
        "report": "what was applied: hooks, the number of sites and the strength; fold, the sites that could "
                  "not be folded (kept as hooks) and why",
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
        "second": "the steering applied after the first (both must be for the same model family)",
        "first_strength": "strength of the first steering (as in LinEAS Apply)",
        "second_strength": "strength of the second steering (as in LinEAS Apply)",
        "STEERING": "one steering equal to the second applied after the first",
    },
    "LineasInspect": {
        "steering": "the steering to look at",
        "plot": "bar plot: per site, how far its map is from the identity (mean |scale - 1| + mean |shift|, "
                "blue) and its support (grey)",
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


def output_key(out) -> str:
    """The key of an output in :data:`TOOLTIPS`: its display name, else its id, else its type."""
    return out.display_name or out.id or out.io_type


def text_of(node_id: str, key: str) -> str | None:
    """The tooltip of input or output ``key`` of ``node_id``, or None when this module has none."""
    text = TOOLTIPS.get(node_id, {}).get(key)
    return text() if callable(text) else text


def documented(schema):
    """Fill the description and the input / output tooltips of a node's io.Schema from the tables above
    (the schema itself carries none of them); returns the schema."""
    schema.description = DESCRIPTIONS.get(schema.node_id, schema.description)
    for inp in schema.inputs or []:
        inp.tooltip = text_of(schema.node_id, inp.id) or inp.tooltip
    for out in schema.outputs or []:
        out.tooltip = text_of(schema.node_id, output_key(out)) or out.tooltip
    return schema
