"""A clean stop with a checkpoint on SIGTERM / SIGUSR1 / SIGUSR2 / Ctrl+C, at a batch boundary."""

from __future__ import annotations

import signal
import threading

import lightning as L

from effnet_lightning.compat import request_stop
from effnet_lightning.console import say
from effnet_lightning.stop_signals import STOP_SIGNALS

_received_signal: int | None = None


def received_signal() -> int | None:
    """The signal that stopped the last fit of this process (None: none did)."""
    return _received_signal


class GracefulInterrupt(L.Callback):
    """The stop signals (`stop_signals.STOP_SIGNALS`): SIGTERM (a scheduler's preemption,
    `kill`), SIGUSR1 (SLURM's warning before a time limit, see `slurm.py`), SIGUSR2 and the
    first Ctrl+C stop a fit at the next batch boundary; the checkpoint callback then writes
    `last.ckpt` and the process exits with 128 + the signal number (after SIGUSR1, once the job
    is requeued). A second Ctrl+C stops at once, without a checkpoint.

    All of them take Lightning's own way to stop at a batch boundary, agreed across processes,
    instead of raising KeyboardInterrupt mid-step or ending the process."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module):
        global _received_signal
        _received_signal = None

        def on_signal(signum, frame):
            global _received_signal
            first = _received_signal is None
            _received_signal = _received_signal or signum
            if signum == signal.SIGINT and not first:
                raise KeyboardInterrupt
            # Only a flag is set here: under DDP rank 0's reaches the other ranks at the next batch,
            # so every rank stops at the same step. (Lightning's own SIGTERM handler also starts a
            # collective inside the handler, which can pair with a different collective on a rank
            # the signal reached in the middle of another one.)
            request_stop(trainer)
            if signum == signal.SIGINT:
                say("Ctrl+C: stopping after this batch and saving a checkpoint (press again to stop at once)", err=True)
            elif signum == signal.SIGUSR1 and first:
                say("SIGUSR1: stopping after this batch, saving a checkpoint and requeueing the job", err=True)
            elif first:
                say(f"{signal.Signals(signum).name}: stopping after this batch and saving a checkpoint", err=True)

        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, on_signal)

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def on_fit_end(self, trainer, pl_module):
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
