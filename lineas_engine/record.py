"""The one record both hosts save and load: a steering with its name, the model it was made for
(fingerprint), how it was trained (method, config, figures) and host extras (e.g. hashes of training
texts). On disk it is a steering file (``files.py``); files written without a name or with the method's
earlier spelling load too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig, TrainResult
from .errors import LineasError
from .files import load_steering, save_steering, steering_bytes
from .methods import get_method
from .steering import Steering

__all__ = ["SteeringRecord", "save_record", "record_bytes", "load_record"]


@dataclass
class SteeringRecord:
    steering: Steering
    name: str = "steering"
    fingerprint: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # "method" plus the run's figures (TrainResult.summary())
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_training(cls, steering: Steering, result: TrainResult, config: TrainConfig, *, name: str,
                      fingerprint: dict, **training: Any) -> "SteeringRecord":
        """The record of a run of :func:`lineas_engine.train` (``training`` adds host figures)."""
        return cls(steering=steering, name=name, fingerprint=dict(fingerprint),
                   training={"method": result.method, **result.summary(), **training}, config=config.to_dict())

    @property
    def method(self) -> str:
        """Canonical method name, as the method registry spells it (a file's ``layerwise`` reads as
        ``layer-wise``); a name the registry does not know is returned as stored."""
        raw = str(self.training.get("method", "lineas"))
        try:
            return get_method(raw).name
        except LineasError:  # a method this engine does not know (registered by another program)
            return raw

    @property
    def architecture(self) -> str:
        return str(self.fingerprint.get("architecture", "unknown"))

    def describe(self) -> str:
        s = self.steering
        return (f"{self.name}: {self.method}, {len(s.sites)} sites, {s.num_parameters()} parameters, "
                f"support {s.support():.1%}, made for {self.architecture}")


def save_record(path: str | os.PathLike, record: SteeringRecord, *, overwrite: bool = True) -> Path:
    """Write ``record`` atomically as a steering file (``overwrite=False``: never replace a file, see
    :func:`save_steering`)."""
    return save_steering(path, record.steering, **_file_parts(record), overwrite=overwrite)


def record_bytes(record: SteeringRecord) -> bytes:
    """The bytes of the steering file :func:`save_record` writes (e.g. for
    :func:`~lineas_engine.write_numbered`). Refuses NaN / infinite maps."""
    return steering_bytes(record.steering, **_file_parts(record), what=repr(record.name))


def _file_parts(record: SteeringRecord) -> dict:
    return dict(fingerprint=record.fingerprint, config=record.config,
                training={**record.training, "method": record.method}, extra={**record.extra, "name": record.name})


def load_record(path: str | os.PathLike, *, model: nn.Module | None = None, architecture: str | None = None,
                device: torch.device | str | None = None, allow_transfer: bool = False) -> SteeringRecord:
    """Read and validate a steering file (see :func:`load_steering`) as a record. A file without a name
    is named after the file."""
    steering, meta = load_steering(path, model=model, architecture=architecture, device=device,
                                   allow_transfer=allow_transfer)
    extra = dict(meta.extra)
    name = extra.pop("name", None)
    return SteeringRecord(steering=steering, name=str(name) if isinstance(name, str) else Path(path).stem,
                          fingerprint=meta.fingerprint, training=meta.training, config=meta.config, extra=extra)
