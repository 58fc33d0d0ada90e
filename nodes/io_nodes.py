"""LineasLoad / LineasSave: steering files in models/lineas and output/lineas."""

from __future__ import annotations

from comfy_api.latest import io

from ._files import list_files, load_ref, save_ref
from ._help import documented
from ._types import Steering


class LineasLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasLoad",
            display_name="LinEAS Load Steering",
            category="lineas",
            inputs=[io.Combo.Input("steering_name", options=list_files())],
            outputs=[Steering.Output(display_name="STEERING"), io.String.Output(display_name="info")],
        ))

    @classmethod
    def execute(cls, steering_name) -> io.NodeOutput:
        record = load_ref(steering_name)
        return io.NodeOutput(record, record.describe())


class LineasSave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasSave",
            display_name="LinEAS Save Steering",
            category="lineas",
            inputs=[Steering.Input("steering"), io.String.Input("name", default="steering")],
            outputs=[io.String.Output(display_name="filename")],
            is_output_node=True,
        ))

    @classmethod
    def execute(cls, steering, name) -> io.NodeOutput:
        path = save_ref(steering, name)
        return io.NodeOutput(path.name, ui={"text": [f"saved {path.name}"]})
