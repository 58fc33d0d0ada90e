"""Benchmarks: ``python -m bench engine [...]`` (engine on a real LLM), ``python -m bench comfy [...]``
(ComfyUI node pack), ``python -m bench llm-speed [...]`` (generation: base / hooked / exported); each
prints ratios measured in one run on this machine."""

from __future__ import annotations

import importlib
import logging
import sys

BENCHES = {"engine": "bench.engine_bench", "comfy": "bench.comfy_bench", "llm-speed": "bench.llm.speed",
           "loss": "bench.loss_bench", "preserve": "bench.llm.preserve_term"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    if not argv or argv[0] not in BENCHES:
        sys.stderr.write(f"usage: python -m bench {{{'|'.join(BENCHES)}}} [options]\n")
        return 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
