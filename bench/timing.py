"""Timing helpers shared by the benchmarks: wall times of repeated calls, reported as min (robust to
other load on the machine) and median."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def timeit(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each of ``repeats`` calls by ``clock`` (wall time by default; ``time.thread_time`` counts
    only this thread's CPU time)."""
    out = []
    for _ in range(repeats):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def ratio_table(times: dict[str, list[float]], base: str, width: int = 40) -> str:
    """Rows ``name  min [median]  ratio`` against ``min(times[base])``."""
    b = min(times[base])
    return "\n".join(f"  {k:{width}s} {min(v):7.3f} [{statistics.median(v):7.3f}]  ratio {min(v) / b:5.3f}"
                     for k, v in times.items())
