"""The `lineas-llm` subcommands, one module each: ``add_parser(subparsers)`` declares its arguments, ``run(args)``
parses nothing and delegates to the library modules."""

from __future__ import annotations

from . import calibrate, demo, evaluate, export, generate, train, tune

__all__ = ["COMMANDS"]

#: name -> module, in the order ``lineas-llm --help`` lists them
COMMANDS = {"train": train, "tune": tune, "calibrate": calibrate, "generate": generate, "eval": evaluate,
            "export": export, "demo": demo}
