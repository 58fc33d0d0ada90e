"""LineasInspect: per-site magnitude and support of a steering, as a plot and text."""

from __future__ import annotations

from comfy_api.latest import io

from ._help import documented
from ._plots import bar_plot
from ._types import Steering


class LineasInspect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasInspect",
            display_name="LinEAS Inspect Steering",
            category="lineas",
            inputs=[Steering.Input("steering")],
            outputs=[io.Image.Output(display_name="plot"), io.String.Output(display_name="text")],
        ))

    @classmethod
    def execute(cls, steering) -> io.NodeOutput:
        stats = steering.steering.stats()
        sites = list(stats)
        mags = [stats[s]["mean_abs_scale_dev"] + stats[s]["mean_abs_shift"] for s in sites]
        sup = [stats[s]["support"] for s in sites]
        lines = [steering.describe()] + [
            f"{s}: dim {stats[s]['dim']}, support {stats[s]['support']:.0%}, mean|w-1| "
            f"{stats[s]['mean_abs_scale_dev']:.4f}, mean|b| {stats[s]['mean_abs_shift']:.4f}" for s in sites]
        return io.NodeOutput(bar_plot(sites, mags, sup, f"LinEAS steering: {steering.name}"), "\n".join(lines))
