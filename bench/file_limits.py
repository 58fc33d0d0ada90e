"""Two memory cases of bad input, measured: a 296-byte steering file whose metadata claims 200,000,000
channels (peak RSS growth while it is refused) and a 1 GiB safetensors model passed as a steering
(Python heap peak while it is refused). Run: ``OMP_NUM_THREADS=1 python -m bench.file_limits``. To measure
an older engine: ``git archive <commit> lineas_engine | tar -x -C OLD && cd OLD &&
PYTHONPATH=OLD:<this repo> python -m bench.file_limits`` (the first line names the engine measured)."""

from __future__ import annotations

import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from safetensors.torch import save as st_save

import lineas_engine
from lineas_engine import LineasError, load_steering


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="lineas-file-limits-"))
    print(f"engine: {Path(lineas_engine.__file__).parent}")
    p = d / "claims_200M.safetensors"
    meta = json.dumps({"format_version": 1, "engine_version": "0.1.0",
                       "sites": {"a": {"dim": 200_000_000, "channel_axis": -1}}})
    p.write_bytes(st_save({"scale.a": torch.ones(2), "shift.a": torch.zeros(2)}, metadata={"lineas": meta}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        load_steering(p)
    except LineasError:
        pass
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"dim 2e8 in a {p.stat().st_size}-byte file: refused; peak RSS +{grew:.1f} MiB, "
          f"{1000 * (time.perf_counter() - t):.1f} ms")
    q = d / "model_1GiB.safetensors"
    n = 2**28
    hdr = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [n],
                                                             "data_offsets": [0, 4 * n]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    with open(q, "wb") as f:
        f.write(len(hdr).to_bytes(8, "little") + hdr)
        f.truncate(8 + len(hdr) + 4 * n)  # sparse: no disk used
    tracemalloc.start()
    t = time.perf_counter()
    try:
        load_steering(q)
    except LineasError:
        pass
    peak = tracemalloc.get_traced_memory()[1] / 1024
    tracemalloc.stop()
    print(f"1 GiB model as a steering: refused; Python heap peak {peak:.1f} KiB, "
          f"{1000 * (time.perf_counter() - t):.1f} ms")
    for f in (p, q):
        f.unlink()
    d.rmdir()


if __name__ == "__main__":
    main()
