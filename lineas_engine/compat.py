"""Whether a steering fits a model: the structure fingerprint stored with it (architecture name, parameter
count, a hash of every parameter's name and shape) and the sites and widths it acts on."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping

from torch import nn

from .errors import IncompatibleSteeringError
from .sites import _spec_from_attributes
from .steering import Steering

logger = logging.getLogger(__name__)

__all__ = ["model_fingerprint", "check_compatible"]


def model_fingerprint(root: nn.Module, architecture: str | None = None) -> dict:
    """Identity of a model's structure (not its weights): class / architecture name, parameter count and a
    hash of every parameter's name and shape."""
    h = hashlib.sha256()
    count = 0
    for name, p in root.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
        count += p.numel()
    return {"architecture": architecture or type(root).__name__, "num_parameters": count,
            "structure_sha256": h.hexdigest()[:16]}


def check_compatible(
    steering: Steering,
    root: nn.Module,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    architecture: str | None = None,
    allow_transfer: bool = False,
) -> None:
    """Raise :class:`IncompatibleSteeringError` naming every mismatch between ``steering`` (and the
    ``fingerprint`` stored with it) and ``root``: other architecture, other structure (parameter names
    and shapes, e.g. another number of layers), missing sites, other widths.

    ``allow_transfer=True`` is the deliberate override for a model of another architecture name or
    structure (e.g. a fine-tune of the model it was trained on with a resized vocabulary): those two
    mismatches are then logged as warnings; sites and widths must still fit."""
    problems, identity = [], []
    fp = fingerprint or {}
    here = architecture or type(root).__name__
    there = fp.get("architecture")
    if there and there != here:
        identity.append(f"it was trained on a {there} model, this is a {here}")
    stored = fp.get("structure_sha256")
    if isinstance(stored, str) and stored:
        mine = model_fingerprint(root, here)
        if stored != mine["structure_sha256"]:
            identity.append(f"it was trained on a model of another structure ({fp.get('num_parameters', '?')!s:.20} "
                            f"parameters, structure {stored:.16}; this one: {mine['num_parameters']}, "
                            f"{mine['structure_sha256']}), e.g. another number of layers")
    if identity and allow_transfer:
        logger.warning("applying a steering made for another model (allow_transfer): %s", "; ".join(identity))
    modules = dict(root.named_modules())
    absent = [s for s in steering.sites if s not in modules]
    if absent:
        problems.append(f"{len(absent)} of its {len(steering.sites)} sites do not exist here (e.g. {absent[:3]})")
    for s in steering.sites:
        if s in modules:
            spec = _spec_from_attributes(modules[s])
            if spec is not None and spec.dim != steering.specs[s].dim:
                problems.append(f"site {s!r} has width {spec.dim} here but {steering.specs[s].dim} in the steering")
    if identity and not allow_transfer:
        hint = [] if problems else ["if this model is a fine-tune of that one, allow the transfer explicitly "
                                    "(allow_transfer=True; lineas-llm --allow-transfer)"]
        problems = identity + problems + hint
    if problems:
        raise IncompatibleSteeringError("steering does not fit this model: " + "; ".join(problems[:8]))


