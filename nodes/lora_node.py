"""LineasSaveLora: the foldable part of a steering as a LoRA-format file for ComfyUI's stock LoRA loaders."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io

from ._files import check_name
from ._help import documented
from ._lora import save_lora, thumbnail_data_uri
from ._patcher import check_fits
from ._types import Steering


class LineasSaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasSaveLora",
            display_name="LinEAS Save as LoRA",
            category="lineas",
            inputs=[
                io.Model.Input("model"),
                Steering.Input("steering"),
                io.String.Input("name", default="lineas_style"),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                io.Image.Input("thumbnail", optional=True),
            ],
            outputs=[io.String.Output(display_name="lora_name"), io.String.Output(display_name="not_expressed")],
            is_output_node=True,
        ))

    @classmethod
    def execute(cls, model, steering, name, strength, thumbnail=None) -> io.NodeOutput:
        import folder_paths

        name = check_name(name)
        check_fits(model, steering)
        folder = Path(folder_paths.get_output_directory()) / "loras"
        thumb = thumbnail_data_uri(thumbnail) if thumbnail is not None else None
        path, skipped = save_lora(folder, name, model, steering, strength, thumb)
        left_out = ("none: every site is in the file" if not skipped else
                    f"{len(skipped)} site(s) NOT in the file (apply them with LinEAS Apply, hooks): " +
                    "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        text = f"saved loras/{path.name} (load it with LoraLoaderModelOnly as {path.name})\nnot expressed: {left_out}"
        return io.NodeOutput(path.name, left_out, ui={"text": [text]})
