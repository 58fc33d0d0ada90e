"""LineasTrainStyle: learn a style steering from a target image set (and the model's own images as
source), save it, and return it with a loss curve and a summary."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..lineas_engine import METHODS, get_method
from ._files import save_ref
from ._help import documented
from ._images import RESIZE_MODES, conform, load_folder, resolve_folder
from ._memory import CHECKPOINTING
from ._plots import line_plot, line_plot_pil
from ._training import PRESETS, StyleTrainingOptions, train_style
from ._types import Steering

logger = logging.getLogger(__name__)


def _images(folder: str, images, resolution: int, resize: str, what: str) -> torch.Tensor:
    import folder_paths

    if images is not None:
        return conform(images, resolution, resize, what=f"the {what} IMAGE input")
    return load_folder(resolve_folder(folder, folder_paths.get_input_directory()), resolution, resize)


class LineasTrainStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasTrainStyle",
            display_name="LinEAS Train Style Steering",
            category="lineas",
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae"),
                io.String.Input("target_folder", default=""),
                io.String.Input("source_folder", default=""),
                io.Int.Input("steps", default=200, min=1, max=100000),
                io.Float.Input("learning_rate", default=0.01, min=1e-6, max=10.0, step=1e-4),
                io.Combo.Input("optimizer", options=["adamw", "adam", "sgd"], default="adamw"),
                io.Float.Input("sparsity", default=0.0, min=0.0, max=100.0, step=0.01),
                io.Combo.Input("sites", options=list(PRESETS), default="all norms"),
                io.String.Input("custom_regex", default=""),
                io.Float.Input("noise_start", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("noise_end", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Int.Input("noise_levels", default=8, min=1, max=32),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=8),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default="crop"),
                io.Int.Input("batch_size", default=16, min=2, max=4096),
                io.Int.Input("micro_batch", default=0, min=0, max=4096),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             control_after_generate=False),  # a Run must not retrain with a new seed
                io.String.Input("name", default="style"),
                io.Combo.Input("method", options=list(METHODS), default="lineas", optional=True),  # old prompts lack it
                io.Image.Input("target_images", optional=True),
                io.Image.Input("source_images", optional=True),
                # required: training runs under it (_conditioning.check_conditioning); kept after the image
                # inputs so that saved workflows keep their socket order
                io.Conditioning.Input("conditioning"),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING), default="auto", optional=True),
            ],
            outputs=[Steering.Output(display_name="STEERING"), io.Image.Output(display_name="loss_curve"),
                     io.String.Output(display_name="summary")],
            hidden=[io.Hidden.unique_id],
            not_idempotent=False,
        ))

    @classmethod
    def fingerprint_inputs(cls, target_folder="", source_folder="", **_) -> str:
        """Re-run when a folder's images change (names, sizes, modification times), not only its path."""
        import folder_paths

        from ._folder_key import folders_key

        return folders_key(folder_paths.get_input_directory(), target_folder, source_folder)

    @classmethod
    def execute(cls, model, vae, target_folder, source_folder, steps, learning_rate, optimizer, sparsity, sites,
                custom_regex, noise_start, noise_end, noise_levels, resolution, resize, batch_size, micro_batch, seed,
                name, method="lineas", target_images=None, source_images=None, conditioning=None,
                gradient_checkpointing="auto") -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        from ._files import check_name

        check_name(name)
        options = StyleTrainingOptions(steps=steps, lr=learning_rate, optimizer=optimizer, sparsity=sparsity,
                                       preset=sites, regex=custom_regex, noise_start=noise_start,
                                       noise_end=noise_end, levels=noise_levels, batch_size=batch_size,
                                       micro_batch=micro_batch, seed=seed, name=name, method=method,
                                       checkpointing=gradient_checkpointing)
        pbar = comfy.utils.ProgressBar(steps, node_id=cls.hidden.unique_id)
        losses: list[float] = []
        every = max(1, steps // 40)

        def on_step(step, loss):  # progress in the UI, with the loss curve as the node's live preview
            mm.throw_exception_if_processing_interrupted()
            losses.append(loss)
            preview = None
            if step % every == 0 or step == steps:
                preview = ("JPEG", line_plot_pil(losses, f"{name}: step {step}/{steps}, loss {loss:.4g}"), 512)
            pbar.update_absolute(step, steps, preview)

        from ._conditioning import check_conditioning
        from ._families import default_resolution
        from ._patcher import architecture_of

        check_conditioning(conditioning, architecture_of(model))  # before any image is read or encoded
        resolution = resolution or default_resolution(model)
        with torch.inference_mode(False), torch.enable_grad():
            tgt = _images(target_folder, target_images, resolution, resize, "target").clone()
            src = _images(source_folder, source_images, resolution, resize, "source").clone()
            record, result = train_style(model, vae, tgt, src, conditioning, options, on_step=on_step)
        path = save_ref(record, name)
        trained_by = get_method(method)
        how = f"{result.steps} steps" if trained_by.iterative else f"closed form, {trained_by.name}"
        summary = (f"{record.describe()}\nloss {result.losses[0]:.4g} -> {result.losses[-1]:.4g} in {how} "
                   f"({result.seconds:.1f} s); {tgt.shape[0]} target / {src.shape[0]} source images x "
                   f"{noise_levels} noise levels\nsaved {path.name}")
        return io.NodeOutput(record, line_plot(result.losses, f"{method} OT loss: {name}"), summary)
