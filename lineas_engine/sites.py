"""Choosing the modules ("sites") a steering acts on, by regex or by named presets that look at module
types (never at hard-coded names), and reading each site's width and channel axis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import LineasError, NoMatchingSiteError

__all__ = [
    "SiteSpec",
    "PRESETS",
    "register_preset",
    "is_norm",
    "find_sites",
    "site_specs",
]

_NORM_NAME = re.compile(r"(?i)(rms|layer|group|batch|instance)?norm(\d*|\dd)$")
_TORCH_NORMS: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _TORCH_NORMS = _TORCH_NORMS + (nn.RMSNorm,)
_CHANNEL_FIRST: tuple[type, ...] = (
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,
    nn.modules.conv._ConvNd,
)


@dataclass(frozen=True)
class SiteSpec:
    """Width ``dim`` of a site's output and the axis that holds it (1 for [B, C, ...], -1 for [B, T, C])."""

    dim: int
    channel_axis: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise LineasError(f"SiteSpec.dim must be a positive int, got {self.dim!r}")
        if self.channel_axis not in (1, -1):
            raise LineasError(f"SiteSpec.channel_axis must be 1 or -1, got {self.channel_axis!r}")


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer, recognised by type: torch's norms, or a class named like ``*RMSNorm``,
    ``*LayerNorm``, ``GroupNorm32``... Adaptive norms (``Ada*``, which return tuples) and containers of
    other norms (e.g. Flux's ``QKNorm``) are not sites."""
    cls = type(module).__name__
    if cls.lower().startswith("ada"):
        return False
    if not (isinstance(module, _TORCH_NORMS) or _NORM_NAME.search(cls)):
        return False
    return not any(_looks_like_norm(child) for child in module.children())


def _looks_like_norm(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_NORMS) or bool(_NORM_NAME.search(type(module).__name__))


def _ancestor_classes(root: nn.Module) -> dict[str, list[str]]:
    """Map each module name to the class names of its ancestors (outermost first)."""
    out: dict[str, list[str]] = {"": []}
    for name, module in root.named_modules():
        for child_name, _ in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            out[full] = out[name] + [type(module).__name__]
    return out


def _norms(root: nn.Module) -> list[str]:
    return [n for n, m in root.named_modules() if n and is_norm(m)]


def _post_norms(root: nn.Module) -> list[str]:
    return [n for n in _norms(root) if re.search(r"(?i)post.*norm", n.rsplit(".", 1)[-1])]


def _resnet_norms(root: nn.Module) -> list[str]:
    anc = _ancestor_classes(root)
    return [n for n in _norms(root) if any("res" in c.lower() for c in anc[n])]


def _transformer_norms(root: nn.Module) -> list[str]:
    anc = _ancestor_classes(root)
    pat = re.compile(r"(?i)transformer|attention|block")
    return [
        n
        for n in _norms(root)
        if not any("res" in c.lower() for c in anc[n]) and any(pat.search(c) for c in anc[n])
    ]


PRESETS: dict[str, Callable[[nn.Module], list[str]]] = {}


def register_preset(name: str, fn: Callable[[nn.Module], list[str]]) -> None:
    """Register a site preset ``fn(root) -> module names``; refuses duplicates and bad names."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise LineasError(f"preset name {name!r} must be lower_snake_case")
    if name in PRESETS:
        raise LineasError(f"preset {name!r} is already registered; choose another name")
    PRESETS[name] = fn


register_preset("norms", _norms)
register_preset("post_norms", _post_norms)
register_preset("resnet_norms", _resnet_norms)
register_preset("transformer_norms", _transformer_norms)


def find_sites(
    root: nn.Module,
    pattern: str | None = None,
    preset: str | None = None,
    exclude: str | None = None,
) -> list[str]:
    """Module names of ``root`` chosen by ``preset`` and/or a regex ``pattern`` (``re.fullmatch`` on the
    full dotted name; with a preset too, both must hold), minus names matching ``exclude``."""
    if pattern is None and preset is None:
        raise NoMatchingSiteError("find_sites needs a pattern or a preset, e.g. preset='norms'")
    names = [n for n, _ in root.named_modules() if n]
    if preset is not None:
        if preset not in PRESETS:
            raise NoMatchingSiteError(f"unknown site preset {preset!r}; choose one of {sorted(PRESETS)}")
        chosen = set(PRESETS[preset](root))
        names = [n for n in names if n in chosen]
    if pattern is not None:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise NoMatchingSiteError(f"site pattern {pattern!r} is not a valid regex: {e}") from None
        names = [n for n in names if rx.fullmatch(n)]
    if exclude is not None:
        try:
            ex = re.compile(exclude)
        except re.error as e:
            raise NoMatchingSiteError(f"site exclude pattern {exclude!r} is not a valid regex: {e}") from None
        names = [n for n in names if not ex.fullmatch(n)]
    if not names:
        examples = _examples(root)
        what = " and ".join(
            x for x in (f"pattern={pattern!r}" if pattern else "", f"preset={preset!r}" if preset else "") if x
        )
        raise NoMatchingSiteError(
            f"{what} matched no module of {type(root).__name__}; module names look like {examples} "
            f"(norm layers: {_norms(root)[:4] or 'none'})"
        )
    return names


def _examples(root: nn.Module, k: int = 6) -> list[str]:
    names = [n for n, _ in root.named_modules() if n]
    step = max(1, len(names) // k)
    return names[::step][:k]


def _spec_from_attributes(module: nn.Module) -> SiteSpec | None:
    axis = 1 if isinstance(module, _CHANNEL_FIRST) or "groupnorm" in type(module).__name__.lower() else -1
    for attr in ("num_channels", "num_features", "out_features", "out_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return SiteSpec(v, axis)
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1:
        return SiteSpec(int(shape[-1]), axis)
    if isinstance(shape, int):
        return SiteSpec(shape, axis)
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        return SiteSpec(int(w.shape[0]), axis)
    return None


def site_specs(root: nn.Module, names: Iterable[str]) -> dict[str, SiteSpec]:
    """Width and channel axis of each named site, read from module attributes. A module whose width
    cannot be read this way (e.g. a norm without an affine) needs its :class:`SiteSpec` from the host,
    measured from the shape of its output in one forward."""
    modules = dict(root.named_modules())
    out: dict[str, SiteSpec] = {}
    unknown = []
    for name in names:
        if name not in modules:
            raise NoMatchingSiteError(f"site {name!r} is not a module of {type(root).__name__}")
        spec = _spec_from_attributes(modules[name])
        if spec is None:
            unknown.append(name)
        else:
            out[name] = spec
    if unknown:
        raise NoMatchingSiteError(
            f"cannot read the output width of {unknown[:5]} from their attributes; "
            "give their SiteSpec(dim, channel_axis) yourself, e.g. read from their output shape in one forward"
        )
    return out
