"""Where every part of the project keeps what it can rebuild (converted models, test fixtures, trained
benchmark models): ``$LINEAS_CACHE`` or ``~/.cache/lineas``; never inside the repo."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$LINEAS_CACHE`` or ``~/.cache/lineas`` (not created here)."""
    return Path(os.environ.get("LINEAS_CACHE") or Path.home() / ".cache" / "lineas")
