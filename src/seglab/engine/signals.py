"""Ctrl-C and SIGTERM as a graceful stop request for the training loop."""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopOnSignal"]


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into ``trainer.stop_requested``; a second SIGINT aborts at once.

    A SIGTERM sent to the whole process group also ends the data loader's workers. PyTorch's
    SIGCHLD handler would then raise in the main process wherever it happens to be, mid-step or
    mid-save; after a stop request SIGCHLD is left alone, so the loader reports the workers' end
    at its next batch, where the trainer expects it, and the step in progress finishes.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_requested = signal.Signals(signum).name
        if hasattr(signal, "SIGCHLD"):
            self.previous.setdefault(signal.SIGCHLD, signal.getsignal(signal.SIGCHLD))
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def __enter__(self) -> "StopOnSignal":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self.previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
