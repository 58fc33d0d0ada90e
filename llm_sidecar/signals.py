"""SIGTERM / SIGINT for `lineas-llm`: a stopped command stops within a batch, runs every ``finally``
(temporary files) and never writes its output."""

from __future__ import annotations

import signal

__all__ = ["Terminated", "Signals", "what_was_kept"]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that every ``finally`` (temporary files) runs."""


class Signals:
    """SIGTERM and SIGINT raise :class:`Terminated` / ``KeyboardInterrupt`` in the main thread, so every ``finally``
    runs. A library can swallow that exception (a bare ``except:`` while a model loads, a ``__del__``), so the
    signal is also remembered: :meth:`check` (``args.check_signals``) raises it again after the model loads, at
    every training step, before each batch of generation, perplexity and calibration, and before a command writes
    its output."""

    def __init__(self):
        self.seen: int | None = None
        self.old: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. called from a test runner's worker)
                return

    def restore(self) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    def _handler(self, signum, frame) -> None:
        self.seen = signum
        self.check()

    def check(self) -> None:
        if self.seen == signal.SIGTERM:
            raise Terminated()
        if self.seen == signal.SIGINT:
            raise KeyboardInterrupt()


def what_was_kept(command: str) -> str:
    """What a stopped command leaves: nothing, except the files the demo and tune finished before the stop."""
    if command == "demo":
        return "the demo's files written before the stop (each one complete) stay in its folder"
    if command == "tune":
        return "every grid point measured before the stop is kept in the --report folder; rerun to resume"
    return "no output file was written"
