"""LineasCombine: the exact composition of two steerings (second applied after first)."""

from __future__ import annotations

from comfy_api.latest import io

from ..lineas_engine import IncompatibleSteeringError, SteeringRecord
from ._help import documented
from ._types import Steering


class LineasCombine(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return documented(io.Schema(  # every description and tooltip: nodes/_help.py
            node_id="LineasCombine",
            display_name="LinEAS Combine Steerings",
            category="lineas",
            inputs=[Steering.Input("first"), Steering.Input("second"),
                    io.Float.Input("first_strength", default=1.0, min=-10.0, max=10.0, step=0.05),
                    io.Float.Input("second_strength", default=1.0, min=-10.0, max=10.0, step=0.05)],
            outputs=[Steering.Output(display_name="STEERING")],
        ))

    @classmethod
    def execute(cls, first, second, first_strength, second_strength) -> io.NodeOutput:
        if first.architecture != second.architecture:
            raise IncompatibleSteeringError(f"cannot combine a steering for {first.architecture} with one for "
                                            f"{second.architecture}")
        combined = first.steering.at_strength(first_strength).then(second.steering.at_strength(second_strength))
        return io.NodeOutput(SteeringRecord(steering=combined, fingerprint=first.fingerprint,
                                            name=f"{first.name}+{second.name}",
                                            training={"method": "combined", "combined": [first.name, second.name]}))
