"""A clean stop with a checkpoint on SIGTERM / SIGUSR1 / SIGUSR2 / Ctrl+C, at a batch boundary."""

from __future__ import annotations

import signal
import threading

import lightning as L
import torch
import torch.distributed as dist

from effnet_lightning.compat import keep_lightning_off_signals, request_stop
from effnet_lightning.console import say
from effnet_lightning.stop_signals import STOP_SIGNALS

_received_signal: int | None = None


def received_signal() -> int | None:
    """The signal that stopped the last fit of this process (None: none did)."""
    return _received_signal


def notice(signum: int) -> str:
    if signum == signal.SIGINT:
        return "Ctrl+C: stopping after this batch and saving a checkpoint (press again to stop at once)"
    if signum == signal.SIGUSR1:
        return "SIGUSR1: stopping after this batch, saving a checkpoint and requeueing the job"
    return f"{signal.Signals(signum).name}: stopping after this batch and saving a checkpoint"


class GracefulInterrupt(L.Callback):
    """The stop signals (`stop_signals.STOP_SIGNALS`): SIGTERM (a scheduler's preemption,
    `kill`), SIGUSR1 (SLURM's warning before a time limit, see `slurm.py`), SIGUSR2 and the
    first Ctrl+C stop a fit at a batch boundary; the checkpoint callback then writes `last.ckpt`
    and the process exits with 128 + the signal number (after SIGUSR1, once the job is
    requeued). A second Ctrl+C stops at once, without a checkpoint.

    The handler only notes the signal. In one process the fit stops after the current batch,
    validation batches included. Under DDP the processes agree at the end of each training
    batch (one all-reduce of the signal number), so every rank stops at the same step whichever
    of them the signal reached, and when: a launcher signals them all, at slightly different
    points of a step. Lightning's own SIGTERM handler is kept out: it starts a collective inside
    the handler, which can pair with another collective on a rank that was in the middle of one."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module):
        global _received_signal
        _received_signal = None
        if threading.current_thread() is not threading.main_thread():
            return
        keep_lightning_off_signals(trainer)

        def on_signal(signum, frame):
            global _received_signal
            first = _received_signal is None
            _received_signal = _received_signal or signum
            if signum == signal.SIGINT and not first:
                raise KeyboardInterrupt
            if trainer.world_size == 1:
                request_stop(trainer)
            if first and trainer.is_global_zero:
                say(notice(signum), err=True)

        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        global _received_signal
        if trainer.world_size == 1 or not self._previous:
            return
        agreed = torch.tensor([_received_signal or 0], device=trainer.strategy.root_device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        signum = int(agreed.item())  # one device-to-host copy a step
        if signum:
            _received_signal = _received_signal or signum
            request_stop(trainer)

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def on_fit_end(self, trainer, pl_module):
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
