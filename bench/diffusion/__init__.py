"""A small unconditional diffusion model trained on this CPU on the shared style images (photo +
illustration, 64 px), written as an SD1.5-format checkpoint that ComfyUI's ordinary CheckpointLoaderSimple
loads, plus a photo-vs-illustration judge. ``python -m bench.diffusion train --out DIR``; see ``recipe``.

Modules: ``data`` (images, split by name pair, augmentation), ``vae`` (TAESD-format autoencoder),
``unet`` (reduced SD1.5 UNet, eps prediction), ``checkpoint`` (the single-file checkpoint), ``judge``
(style classifier), ``sample`` (generation through ComfyUI's nodes), ``recipe`` (stages, caching, report).
The model classes are ComfyUI's own, imported at run time from the installed ComfyUI ($COMFYUI_PATH)."""
