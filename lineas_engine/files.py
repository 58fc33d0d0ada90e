"""The steering file: safetensors tensors ``scale.<site>`` / ``shift.<site>`` plus ONE metadata key
``lineas`` holding JSON (a single key keeps the bytes deterministic: safetensors orders metadata keys at
random). Writes are atomic (``atomic.py``); nothing is pickled. Whether a steering fits a model is
``compat.py``.
Loading checks everything and names each problem; unknown metadata from a newer version is ignored
with a warning. Loading reads the header first and checks every size it declares against the file's
real size before reading (or allocating) anything else. Format 2 adds ``checksum``: a SHA-256 of the
metadata and of every tensor's name, dtype, shape and bytes (format 1 files, without it, still load)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .atomic import atomic_write_bytes
from .compat import check_compatible
from .errors import NonFiniteMapError, SteeringFileError
from .sites import SiteSpec
from .steering import Steering

__all__ = ["FORMAT_VERSION", "SteeringMeta", "save_steering", "steering_bytes", "load_steering"]

FORMAT_VERSION = 2  # 2: adds "checksum"; 1 (no checksum) still loads
_KNOWN_KEYS = {"format_version", "engine_version", "sites", "fingerprint", "config", "training", "extra", "checksum"}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit on the JSON header
_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


@dataclass
class SteeringMeta:
    format_version: int
    engine_version: str
    sites: dict[str, SiteSpec]
    fingerprint: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def save_steering(
    path: str | os.PathLike,
    steering: Steering,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save ``steering`` (float32) with its metadata, atomically, as safetensors. Refuses NaN / infinite
    maps (nothing is written). ``overwrite=False``: never replace an existing file (:class:`FileExistsError`,
    also when another writer creates ``path`` meanwhile)."""
    data = steering_bytes(steering, fingerprint=fingerprint, config=config, training=training, extra=extra,
                          what=Path(path).name)
    return atomic_write_bytes(path, data, overwrite=overwrite)


def steering_bytes(
    steering: Steering,
    *,
    fingerprint: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    what: str = "the steering",
) -> bytes:
    """The bytes of the steering file :func:`save_steering` writes. Refuses NaN / infinite maps
    (:class:`NonFiniteMapError`, naming ``what``)."""
    from . import __version__

    tensors = {}
    for s in steering.sites:
        tensors[f"scale.{s}"] = steering.weight(s).detach().float().cpu().contiguous()
        tensors[f"shift.{s}"] = steering.bias(s).detach().float().cpu().contiguous()
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteMapError(f"{name} has {bad} NaN or infinite value(s) (a diverged training?); "
                                    f"not saving {what}: retrain with a lower learning rate")
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
        meta["checksum"] = _checksum(meta, tensors)
        blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SteeringFileError(f"steering metadata is not JSON-serialisable: {e}") from None
    return st_save(tensors, metadata={"lineas": blob})


def _checksum(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the canonical metadata JSON (without ``checksum``) and of each tensor's name, dtype,
    shape and bytes, in name order: independent of the file layout."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True,
                        allow_nan=False).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def _read_header(f, size: int, path: Path) -> tuple[dict, int]:
    """The safetensors JSON header (and its length), read without the tensor data."""
    head = f.read(8)
    if len(head) < 8:
        raise SteeringFileError(f"{path} is truncated ({size} bytes); it is not a steering file")
    n = int.from_bytes(head, "little")
    if n <= 1 or n > _MAX_HEADER or 8 + n > size:
        raise SteeringFileError(f"{path} is truncated or not a safetensors file (header of {n} bytes, "
                                f"file of {size})")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SteeringFileError(f"{path} has a corrupt safetensors header ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise SteeringFileError(f"{path} has a corrupt safetensors header (not a JSON object)")
    return header, n


def _check_entries(header: dict, meta: "SteeringMeta", size: int, n: int, path: Path) -> None:
    """Every tensor the header declares: a float vector of its site's width, with offsets that tile the
    data exactly up to the end of the file. Checked before any tensor is read or allocated."""
    expected = {f"{k}.{s}": spec.dim for s, spec in meta.sites.items() for k in ("scale", "shift")}
    names = {k for k in header if k != "__metadata__"}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        raise SteeringFileError(
            f"{path}: tensors do not match the site list (missing {missing[:4]}, extra {extra[:4]})"
        )
    spans = []
    for name, dim in expected.items():
        e = header[name]
        if not isinstance(e, dict):
            raise SteeringFileError(f"{path}: header entry {name!r} is not an object")
        dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _FLOAT_BYTES:
            raise SteeringFileError(f"{path}: {name} has dtype {dtype!r:.20}; steering tensors must be finite floats")
        if shape != [dim]:
            shown = tuple(shape) if isinstance(shape, list) else shape
            raise SteeringFileError(f"{path}: {name} has shape {shown!r:.60}, expected ({dim},)")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] or offsets[1] - offsets[0] != dim * _FLOAT_BYTES[dtype]):
            raise SteeringFileError(f"{path}: {name} has invalid data offsets {offsets!r:.60}")
        spans.append(tuple(offsets))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            raise SteeringFileError(f"{path}: tensor data overlaps or has gaps (at byte {a}); the file is corrupt")
        end = b
    if 8 + n + end != size:
        raise SteeringFileError(f"{path} is truncated or has trailing bytes: the header declares "
                                f"{8 + n + end} bytes, the file has {size}")


def _parse_meta(raw: Any, path: Path) -> SteeringMeta:
    if not isinstance(raw, str):
        raise SteeringFileError(f"{path} has no 'lineas' metadata: not a LinEAS steering file")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise SteeringFileError(f"{path}: 'lineas' metadata is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(meta, dict):
        raise SteeringFileError(f"{path}: 'lineas' metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SteeringFileError(f"{path}: format_version must be an integer >= 1, got {version!r:.40}")
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
        if not name.strip() or name != name.strip():
            raise SteeringFileError(f"{path}: site name {name!r:.80} is empty or has surrounding spaces")
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
    if version >= 2 and not (isinstance(meta.get("checksum"), str) and meta["checksum"].startswith("sha256:")):
        raise SteeringFileError(f"{path}: format {version} needs a 'checksum' entry; the file is corrupt")
    return SteeringMeta(version, str(engine_version)[:100], sites, **parts)


def load_steering(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
    architecture: str | None = None,
    allow_transfer: bool = False,
) -> tuple[Steering, SteeringMeta]:
    """Read and validate a steering file. Every problem raises :class:`SteeringFileError` naming it.
    With ``model``, also check that it fits that model (:func:`check_compatible`; ``allow_transfer``
    accepts a model of another structure, e.g. a fine-tune of the one it was trained on)."""
    path = Path(path)
    if not path.is_file():
        raise SteeringFileError(f"steering file {path} does not exist or is not a file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, n = _read_header(f, size, path)
            md = header.get("__metadata__")
            if md is not None and not isinstance(md, dict):
                raise SteeringFileError(f"{path}: safetensors metadata is a {type(md).__name__}, not an object")
            meta = _parse_meta((md or {}).get("lineas"), path)
            _check_entries(header, meta, size, n, path)  # bounds what follows by the file's real size
            f.seek(0)
            data = f.read()
    except OSError as e:
        raise SteeringFileError(f"cannot read steering file {path}: {e.strerror or e}") from None
    if len(data) != size:
        raise SteeringFileError(f"{path} changed while it was read; try again")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise SteeringFileError(f"{path}: cannot read tensors ({e})") from None
    if meta.format_version >= 2:
        raw = json.loads(header["__metadata__"]["lineas"])
        if _checksum(raw, tensors) != raw["checksum"]:
            raise SteeringFileError(f"{path}: checksum mismatch: the file is corrupt (bit flips or an edit); "
                                    "use an intact copy")
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
        check_compatible(steering, model, fingerprint=meta.fingerprint, architecture=architecture,
                         allow_transfer=allow_transfer)
    if device is not None:
        steering.to(device)
    return steering, meta
