"""The steering file: safetensors tensors ``scale.<site>`` / ``shift.<site>`` plus ONE metadata key
``lineas`` holding JSON (a single key keeps the bytes deterministic: safetensors orders metadata keys at
random). Writes are atomic; nothing is pickled.
Loading checks everything and names each problem; unknown metadata from a newer version is ignored
with a warning."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .errors import IncompatibleSteeringError, SteeringFileError
from .sites import SiteSpec, _spec_from_attributes
from .steering import Steering

__all__ = [
    "FORMAT_VERSION",
    "SteeringMeta",
    "save_steering",
    "load_steering",
    "model_fingerprint",
    "check_compatible",
    "atomic_write_bytes",
]

FORMAT_VERSION = 1
_KNOWN_KEYS = {"format_version", "engine_version", "sites", "fingerprint", "config", "training", "extra"}


@dataclass
class SteeringMeta:
    format_version: int
    engine_version: str
    sites: dict[str, SiteSpec]
    fingerprint: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: a reader sees the
    old file or the new one, never half of one, and an interrupted write leaves nothing behind."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SteeringFileError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_steering(
    path: str | os.PathLike,
    steering: Steering,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``steering`` (float32) with its metadata, atomically, as safetensors."""
    from . import __version__

    tensors = {}
    for s in steering.sites:
        tensors[f"scale.{s}"] = steering.weight(s).detach().float().cpu().contiguous()
        tensors[f"shift.{s}"] = steering.bias(s).detach().float().cpu().contiguous()
    meta = {
        "format_version": FORMAT_VERSION,
        "engine_version": __version__,
        "sites": {s: {"dim": p.dim, "channel_axis": p.channel_axis} for s, p in steering.specs.items()},
        "fingerprint": dict(fingerprint or {}),
        "config": dict(config or {}),
        "training": dict(training or {}),
        "extra": dict(extra or {}),
    }
    try:
        blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SteeringFileError(f"steering metadata is not JSON-serialisable: {e}") from None
    return atomic_write_bytes(path, st_save(tensors, metadata={"lineas": blob}))


def _read_header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise SteeringFileError(f"{path} is truncated ({len(data)} bytes); it is not a steering file")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise SteeringFileError(f"{path} is truncated or not a safetensors file (header of {n} bytes)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SteeringFileError(f"{path} has a corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise SteeringFileError(f"{path} has a corrupt safetensors header")
    return header


def _parse_meta(raw: Any, path: Path) -> SteeringMeta:
    if not isinstance(raw, str):
        raise SteeringFileError(f"{path} has no 'lineas' metadata: not a LinEAS steering file")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SteeringFileError(f"{path}: 'lineas' metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SteeringFileError(f"{path}: 'lineas' metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SteeringFileError(f"{path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SteeringFileError(
            f"{path} uses steering format {version}; this engine reads up to {FORMAT_VERSION}: upgrade lineas"
        )
    unknown = sorted(set(meta) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown metadata {unknown} (written by a newer lineas?)", stacklevel=3)
    sites_raw = meta.get("sites")
    if not isinstance(sites_raw, dict) or not sites_raw:
        raise SteeringFileError(f"{path}: 'sites' must be a non-empty object, got {sites_raw!r:.80}")
    sites = {}
    for name, spec in sites_raw.items():
        if not isinstance(spec, dict):
            raise SteeringFileError(f"{path}: site {name!r} must map to {{dim, channel_axis}}, got {spec!r:.80}")
        try:
            sites[name] = SiteSpec(spec.get("dim"), spec.get("channel_axis", -1))
        except ValueError as e:
            raise SteeringFileError(f"{path}: site {name!r}: {e}") from None
    parts = {}
    for key in ("fingerprint", "config", "training", "extra"):
        v = meta.get(key, {})
        if not isinstance(v, dict):
            raise SteeringFileError(f"{path}: {key!r} must be an object, got {type(v).__name__}")
        parts[key] = v
    engine_version = meta.get("engine_version", "unknown")
    return SteeringMeta(version, str(engine_version), sites, **parts)


def load_steering(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
    architecture: str | None = None,
) -> tuple[Steering, SteeringMeta]:
    """Read and validate a steering file. Every problem raises :class:`SteeringFileError` naming it.
    With ``model``, also check that it fits that model (:func:`check_compatible`)."""
    path = Path(path)
    if not path.is_file():
        raise SteeringFileError(f"steering file {path} does not exist")
    data = path.read_bytes()
    header = _read_header(data, path)
    meta = _parse_meta((header.get("__metadata__") or {}).get("lineas"), path)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise SteeringFileError(f"{path}: cannot read tensors ({e})") from None
    expected = {f"{k}.{s}" for s in meta.sites for k in ("scale", "shift")}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise SteeringFileError(
            f"{path}: tensors do not match the site list (missing {missing[:4]}, extra {extra[:4]})"
        )
    steering = Steering(meta.sites)
    with torch.no_grad():
        for s, spec in meta.sites.items():
            for kind, param in (("scale", steering.weight(s)), ("shift", steering.bias(s))):
                t = tensors[f"{kind}.{s}"]
                if t.shape != (spec.dim,):
                    raise SteeringFileError(f"{path}: {kind}.{s} has shape {tuple(t.shape)}, expected ({spec.dim},)")
                if not t.is_floating_point() or not torch.isfinite(t).all():
                    raise SteeringFileError(f"{path}: {kind}.{s} must be finite floats")
                param.copy_(t.float())
    if model is not None:
        check_compatible(steering, model, fingerprint=meta.fingerprint, architecture=architecture)
    if device is not None:
        steering.to(device)
    return steering, meta


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
) -> None:
    """Raise :class:`IncompatibleSteeringError` naming every mismatch between ``steering`` (and the
    ``fingerprint`` stored with it) and ``root``: other architecture, missing sites, other widths."""
    problems = []
    here = architecture or type(root).__name__
    there = (fingerprint or {}).get("architecture")
    if there and there != here:
        problems.append(f"it was trained on a {there} model, this is a {here}")
    modules = dict(root.named_modules())
    absent = [s for s in steering.sites if s not in modules]
    if absent:
        problems.append(f"{len(absent)} of its {len(steering.sites)} sites do not exist here (e.g. {absent[:3]})")
    for s in steering.sites:
        if s in modules:
            spec = _spec_from_attributes(modules[s])
            if spec is not None and spec.dim != steering.specs[s].dim:
                problems.append(f"site {s!r} has width {spec.dim} here but {steering.specs[s].dim} in the steering")
    if problems:
        raise IncompatibleSteeringError("steering does not fit this model: " + "; ".join(problems[:8]))


