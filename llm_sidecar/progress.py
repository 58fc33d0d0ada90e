"""Progress bars on stderr (tqdm), silenced with ``LINEAS_NO_PROGRESS=1`` or ``enabled=False``."""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["progress", "progress_enabled", "progress_bar"]

T = TypeVar("T")


def progress_enabled() -> bool:
    return os.environ.get("LINEAS_NO_PROGRESS", "") in ("", "0")


def progress(it: Iterable[T], desc: str = "", enabled: bool = True, check: Callable[[], None] | None = None,
             **kw) -> Iterable[T]:
    """``it`` with a tqdm bar on stderr; ``check``, if given, runs before each item (it raises to stop: a signal)."""
    if check is not None:
        if hasattr(it, "__len__"):
            kw.setdefault("total", len(it))  # the generator below has no length: keep the bar's percentage
        it = _checked(it, check)
    if not (enabled and progress_enabled()):
        return it
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415
    except ImportError:
        return it
    return tqdm(it, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


def _checked(it: Iterable[T], check: Callable[[], None]) -> Iterator[T]:
    for x in it:
        check()
        yield x


class progress_bar:  # noqa: N801 - used as a context manager like tqdm
    """``with progress_bar(steps, "train") as on_step: fit(..., on_step=on_step)``: a tqdm bar on stderr
    that shows the loss (a no-op callback when progress is disabled). ``check``, if given, runs first at every
    step (the CLI's: re-raises a signal that a library swallowed)."""

    def __init__(self, total: int, desc: str = "", check: Callable[[], None] | None = None):
        self.total, self.desc, self.bar, self.check = total, desc, None, check  # check: raises to stop (a signal)

    def __enter__(self):
        if progress_enabled():
            try:
                from tqdm.auto import tqdm  # noqa: PLC0415

                self.bar = tqdm(total=self.total, desc=self.desc, file=sys.stderr, dynamic_ncols=True, leave=False)
            except ImportError:
                self.bar = None
        return self

    def __call__(self, step: int, loss: float) -> None:
        if self.check is not None:
            self.check()
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4g}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
