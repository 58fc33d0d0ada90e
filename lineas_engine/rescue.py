"""Never lose a trained result to a failed save: when writing to the place asked for fails (disk full, the
name taken meanwhile, a vanished folder...), write to a safe place instead and say where, in one line."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from .errors import LineasError, NonFiniteMapError
from .paths import cache_root

__all__ = ["save_or_rescue"]


def _rescue_dirs() -> Iterable[Path]:
    yield cache_root() / "unsaved"
    yield Path(tempfile.gettempdir())


def save_or_rescue(save: Callable[[Path], object], out: str | os.PathLike, what: str = "the trained steering", *,
                   rescue: Callable[[Path], object] | None = None) -> Path:
    """``save(out)`` and return the path written (what ``save`` returns when it is a path, else ``out``).
    When that fails, ``rescue(spot)`` (default ``save``) writes to ``$LINEAS_CACHE/unsaved/`` (or the temp
    folder) and a :class:`LineasError` names both places. A map that is not finite is not rescued."""
    out = Path(out)
    try:
        written = save(out)
        return written if isinstance(written, Path) else out
    except FileExistsError as e:  # the name taken meanwhile, or a file where the folder should be
        reason = f"{e.filename2 or e.filename or out} already exists (not replaced)"
    except OSError as e:
        reason = e.strerror or str(e)
    except NonFiniteMapError:
        raise  # nothing worth keeping
    except LineasError as e:
        reason = str(e)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tried = []
    for d in _rescue_dirs():
        spot = d / f"{out.stem}-{stamp}-{os.getpid()}{out.suffix or '.safetensors'}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            (rescue or save)(spot)
        except (OSError, LineasError) as e:
            tried.append(f"{spot} ({getattr(e, 'strerror', None) or e})")
            continue
        raise LineasError(f"cannot write {str(out)!r}: {reason}; {what} was kept at {spot}: move it where you "
                          "want it")
    raise LineasError(f"cannot write {str(out)!r}: {reason}; keeping {what} elsewhere failed too: "
                      + "; ".join(tried))
