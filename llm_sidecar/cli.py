"""`lineas-llm`: learn, apply, evaluate and export LinEAS detox steering for Hugging Face causal LMs.

Each subcommand lives in :mod:`llm_sidecar.commands`; this module builds the parser and runs one command.
Errors become one line on stderr (LINEAS_DEBUG=1 shows the traceback) and a non-zero exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from lineas_engine import LineasError

from .commands import COMMANDS
from .signals import Signals, Terminated, what_was_kept

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lineas-llm", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return ap


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # our own bars show progress; keep stderr to one line on errors
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    from .validate import check_args

    signals = Signals()
    args.check_signals = signals.check
    signals.install()
    name = args.command
    try:
        check_args(args)
        return COMMANDS[name].run(args)
    except LineasError as e:
        if os.environ.get("LINEAS_DEBUG"):
            raise
        sys.stderr.write(f"lineas-llm {name}: error: {_one_line(e)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"lineas-llm {name}: interrupted; {what_was_kept(name)}\n")
        return 130
    except Terminated:
        sys.stderr.write(f"lineas-llm {name}: terminated; {what_was_kept(name)}\n")
        return 143
    except (OSError, MemoryError) as e:  # I/O (disk full, permissions, a vanished file) and memory
        if os.environ.get("LINEAS_DEBUG"):
            raise
        what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename else e
        sys.stderr.write(f"lineas-llm {name}: error: {type(e).__name__}: {_one_line(what)}\n")
        return 1
    except Exception as e:  # a bug or an unforeseen input: still one line; LINEAS_DEBUG=1 shows the traceback
        if os.environ.get("LINEAS_DEBUG"):
            raise
        sys.stderr.write(f"lineas-llm {name}: internal error: {type(e).__name__}: {_one_line(e)} "
                         "(rerun with LINEAS_DEBUG=1 for the traceback and please report it)\n")
        return 2
    finally:
        signals.restore()


def _one_line(e) -> str:
    return " ".join(str(e).split())[:2000]


if __name__ == "__main__":
    raise SystemExit(main())
