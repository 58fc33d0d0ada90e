"""LineasApply: a clone of the MODEL with a steering applied (hooks or folded weights)."""

from __future__ import annotations

from comfy_api.latest import io

from ._help import documented
from ._patcher import apply_steering_report
from ._types import Steering


class LineasApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasApply",
            display_name="LinEAS Apply Steering",
            category="lineas",
            inputs=[
                io.Model.Input("model"),
                Steering.Input("steering"),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01),
                io.Boolean.Input("invert", default=False),
                io.Combo.Input("mode", options=["hooks", "fold"], default="hooks"),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="report")],
        ))

    @classmethod
    def execute(cls, model, steering, strength, start_percent, end_percent, invert, mode) -> io.NodeOutput:
        return io.NodeOutput(*apply_steering_report(model, steering, strength, start_percent, end_percent, invert,
                                                    mode))
