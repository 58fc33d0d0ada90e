"""Forward hooks that apply a steering and/or record pooled activations. One mechanism for every host:
``attach`` returns a handle; ``handle.remove()`` (or leaving its ``with`` block, also on an exception)
restores the model exactly."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .errors import LineasError, NoMatchingSiteError, SiteOutputError
from .pooling import pool
from .sites import SiteSpec
from .steering import Steering

__all__ = ["StopForward", "Recorder", "SteeringHandle", "attach", "steered", "run_until_sites", "recomputing",
           "is_recomputing", "context_pass", "is_context_pass"]

logger = logging.getLogger(__name__)
_state = threading.local()


@contextlib.contextmanager
def _marked(flag: str) -> Iterator[None]:
    """Sets the thread-local ``flag`` for the block (nested blocks restore the outer value)."""
    prev = getattr(_state, flag, False)
    setattr(_state, flag, True)
    try:
        yield
    finally:
        setattr(_state, flag, prev)


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Marks a gradient-checkpointing recompute pass (in the thread that runs it): the steering still acts,
    but recorders do not record a second time and the last site does not stop the forward."""
    with _marked("recomputing"):
        yield


def is_recomputing() -> bool:
    return getattr(_state, "recomputing", False)


@contextlib.contextmanager
def context_pass() -> Iterator[None]:
    """Marks a forward whose only use is as context for the next one (in the thread that runs it), e.g. a
    prompt prefix shared by every sample, run once and its KV cache reused: the steering acts (the prefix
    is read steered, as at inference), recorders do not record and the last site does not stop it."""
    with _marked("context_pass"):
        yield


def is_context_pass() -> bool:
    return getattr(_state, "context_pass", False)


class StopForward(Exception):
    """Raised by the hook of the last site that a loss reads: the rest of the forward is not needed."""


class Recorder:
    """Collects one pooled vector per sample at each site (after the steering map, if any)."""

    def __init__(self, specs: Mapping[str, SiteSpec], mask: torch.Tensor | None = None, detach: bool = False):
        self.specs = dict(specs)
        self.mask = mask
        self.detach = detach
        self.pooled: dict[str, list[torch.Tensor]] = {s: [] for s in self.specs}
        self.order: list[str] = []

    @property
    def sites(self) -> list[str]:
        return list(self.specs)

    def record(self, site: str, h: torch.Tensor) -> None:
        v = pool(h, self.specs[site].channel_axis, self.mask)
        if is_recomputing():  # pooled again (same ops as the first pass, as checkpointing expects), not kept
            return
        if site not in self.order:
            self.order.append(site)
        self.pooled[site].append(v.detach() if self.detach else v)

    def take(self) -> dict[str, torch.Tensor]:
        """Concatenate what was recorded ([N, d] per site) and reset."""
        missing = [s for s, v in self.pooled.items() if not v]
        if missing:
            raise SiteOutputError(f"sites {missing[:5]} never ran during the forward pass; check the site list")
        out = {s: torch.cat(v, dim=0) for s, v in self.pooled.items()}
        self.pooled = {s: [] for s in self.specs}
        return out


class SteeringHandle:
    """Hooks attached by :func:`attach`. ``remove()`` detaches them all; usable as a context manager."""

    def __init__(self, handles: list[torch.utils.hooks.RemovableHandle], fired: set[str] | None = None):
        self._handles = handles
        self.fired: set[str] = fired if fired is not None else set()  # sites whose hook ran while attached

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _finite(x) -> bool:
    try:
        return not isinstance(x, (str, bytes)) and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def attach(
    root: nn.Module,
    steering: Steering | None = None,
    strength: float = 1.0,
    *,
    recorder: Recorder | None = None,
    stop_after: str | None = None,
) -> SteeringHandle:
    """Register one forward hook per site on ``root``'s modules.

    Sites are the steering's (and the recorder's). At each site the hook maps the module output with the
    steering at ``strength``, records the pooled result in ``recorder``, and raises :class:`StopForward`
    after ``stop_after``.
    """
    if steering is None and recorder is None:
        raise LineasError("attach needs a steering, a recorder, or both")
    if steering is not None and not _finite(strength):
        raise LineasError(f"strength must be a finite number (1 = the trained map, 0 = off), got {strength!r}")
    sites = list(dict.fromkeys((steering.sites if steering else []) + (recorder.sites if recorder else [])))
    modules = dict(root.named_modules())
    missing = [s for s in sites if s not in modules]
    if missing:
        raise NoMatchingSiteError(
            f"{len(missing)} site(s) are not modules of {type(root).__name__}: {missing[:5]}; "
            "the steering was made for another model"
        )
    steer_sites = set(steering.sites) if steering is not None else set()
    rec_sites = set(recorder.sites) if recorder is not None else set()
    handles = []
    fired: set[str] = set()
    try:
        for site in sites:
            handles.append(
                modules[site].register_forward_hook(
                    _make_hook(site, steering if site in steer_sites else None, strength,
                               recorder if site in rec_sites else None, site == stop_after, fired)
                )
            )
    except BaseException:
        for h in handles:
            h.remove()
        raise
    logger.debug("attached %d hooks (strength %s) to %s", len(handles), strength, type(root).__name__)
    return SteeringHandle(handles, fired)


def _make_hook(site: str, steering: Steering | None, strength: float, recorder: Recorder | None, stop: bool,
               fired: set[str]):
    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        fired.add(site)
        if not isinstance(output, torch.Tensor):
            raise SiteOutputError(
                f"site {site!r} returns {type(output).__name__}, not a tensor; choose a module that outputs "
                "one tensor (e.g. a norm layer), not a block"
            )
        if steering is not None:
            output = steering.apply_to(site, output, strength)
        context = is_context_pass()
        if recorder is not None and not context:
            recorder.record(site, output)
        if stop and not context and not is_recomputing():
            raise StopForward(site)
        return output if steering is not None else None

    return hook


@contextlib.contextmanager
def steered(root: nn.Module, steering: Steering | None, strength: float = 1.0) -> Iterator[SteeringHandle]:
    """``with steered(model, steering, 0.5): model.generate(...)``; hooks are gone afterwards. No steering
    or strength 0 attaches nothing (the model runs exactly as it is)."""
    handle = attach(root, steering, strength) if steering is not None and strength != 0 else SteeringHandle([])
    try:
        yield handle
    finally:
        handle.remove()


def run_until_sites(forward: Callable[[Any], Any], batch: Any) -> None:
    """Run ``forward(batch)``; a :class:`StopForward` from the last site ends it early and quietly."""
    try:
        forward(batch)
    except StopForward:
        pass
