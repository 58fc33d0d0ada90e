"""Timing helpers shared by the benchmarks: wall times of repeated calls, reported as min (robust to
other load on the machine) and median."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timeit(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ratio_table(times: dict[str, list[float]], base: str, width: int = 40) -> str:
    """Rows ``name  min [median]  ratio`` against ``min(times[base])``."""
    b = min(times[base])
    return "\n".join(f"  {k:{width}s} {min(v):7.3f} [{statistics.median(v):7.3f}]  ratio {min(v) / b:5.3f}"
                     for k, v in times.items())
