"""How docs/engine-api.md spells a public name of lineas_engine: its call signature without annotations
(``name(a, b=1, *, c=None)``) for classes and functions, the bare name for everything else."""

from __future__ import annotations

import dataclasses
import inspect


def render(name: str, obj) -> str:
    if not (inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, BaseException))):
        return name
    fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    parts, star = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append("*" + p.name)
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            parts.append("**" + p.name)
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        default = p.default
        if p.name in fields and fields[p.name].default_factory is not dataclasses.MISSING:
            default = fields[p.name].default_factory()
        parts.append(p.name if default is p.empty else f"{p.name}={default!r}")
    return f"{name}({', '.join(parts)})"
