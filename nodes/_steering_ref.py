"""What flows through a LINEAS_STEERING socket: the engine's steering plus the metadata that names the
model it was made for."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lineas_engine import Steering


@dataclass
class SteeringRef:
    steering: Steering
    architecture: str
    fingerprint: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    name: str = "steering"

    def describe(self) -> str:
        s = self.steering
        return (f"{self.name}: {len(s.sites)} sites, {s.num_parameters()} parameters, support {s.support():.1%}, "
                f"made for {self.architecture}")
