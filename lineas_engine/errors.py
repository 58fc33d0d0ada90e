"""Errors raised by the engine. All derive from ``LineasError`` (a ``ValueError``) so hosts can turn
any of them into one clear line for the user."""

from __future__ import annotations

__all__ = [
    "LineasError",
    "NoMatchingSiteError",
    "SiteOutputError",
    "SteeringFileError",
    "NonFiniteMapError",
    "IncompatibleSteeringError",
    "NonFiniteLossError",
]


class LineasError(ValueError):
    """Base class: a user-facing problem whose message names the value and the fix."""


class NoMatchingSiteError(LineasError):
    """A site pattern or preset matched no module of the model."""


class SiteOutputError(LineasError):
    """A site's output cannot be steered (not a tensor, or the wrong width)."""


class SteeringFileError(LineasError):
    """A steering file is missing, truncated, malformed or of an unsupported version."""


class NonFiniteMapError(SteeringFileError):
    """A steering to be saved holds NaN or infinite values (a diverged training): nothing is written."""


class IncompatibleSteeringError(LineasError):
    """A steering does not fit the model it is applied to."""


class NonFiniteLossError(LineasError):
    """Training produced a NaN or infinite loss."""
