"""Stopping a run the way clusters and notebook services do: SIGTERM (or SIGINT), then a kill.

A batch scheduler or a notebook service sends SIGTERM some seconds before SIGKILL; Ctrl-C and a
kernel interrupt send SIGINT. While ``Stop`` is installed and deferring (``train``'s epoch loop),
the first signal only asks: the loop finishes the step in flight, checkpoints where it is and
raises ``Stopped``, which the command line turns into exit code 128 + the signal (143, 130). A
second signal, or one outside the loop (data loading, the final test), raises ``Stopped`` at once:
writes are atomic (``lib/runs.py``), so that leaves no partial file.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal. A KeyboardInterrupt, so code that cleans up after Ctrl-C does
    the same after SIGTERM; ``checkpoint`` is what ``--resume`` continues from (None: nothing yet)."""

    def __init__(self, signum: int, message: str, checkpoint: Path | None = None):
        super().__init__(message)
        self.signum, self.message, self.checkpoint = signum, message, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        from .runs import display_path

        return self.message + (f"; checkpoint {display_path(self.checkpoint)}" if self.checkpoint else "")


def _exit_with_code(signum, frame) -> None:
    os._exit(128 + signum)  # the checkpoint is whole already (written, then a barrier)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Stop:
    """SIGTERM and SIGINT handlers for one run; ``signum`` is the first signal received.

    Installed only in the main thread (Python's rule), and not for a signal the process inherited
    as ignored (``nohup``, a background job's SIGINT): that one stays ignored.
    """

    def __init__(self, launched: bool = False):
        self.signum: int | None = None
        self.deferring = False
        self.launched = launched  # one of several processes under torchrun (see uninstall)
        self._previous = {}

    def install(self) -> "Stop":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back. Under torchrun, when the run is stopping (a signal came,
        here or in another process), a signal from now on exits at once with the stop's code
        instead: the launcher sends SIGTERM to every process still running once one has exited,
        and a process still tearing down would otherwise die of it (-15) instead of exiting 143.
        A single process (a terminal, a notebook's kernel) gets its own handlers back."""
        leaving = self.launched and self.signum is not None
        for sig, previous in self._previous.items():
            signal.signal(sig, _exit_with_code if leaving else previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
            if self.deferring:
                return
        raise Stopped(
            signum,
            f"stopped by {'a second ' if not first else ''}{signal_name(signum)}{', at once' if not first else ''}",
        )

    def requested(self, ctx) -> int | None:
        """The signal every process stops on at this boundary, or None to go on.

        Under torchrun a signal may reach one process only, or reach them at different steps: the
        flags are reduced (max) at every boundary, so all processes stop after the same step.
        """
        from . import distributed

        agreed = distributed.max_over_processes(self.signum or 0, ctx) or None
        if agreed and self.signum is None:
            self.signum = agreed  # stopping for another process's signal: a signal now is a second one
        return agreed
