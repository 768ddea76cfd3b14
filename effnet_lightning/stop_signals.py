"""The signals that stop a run, and how the processes a run starts leave them to it.

A scheduler (`timeout`, systemd, SLURM's `--signal`) sends its signal to the whole process
group: the loader workers, the shard readers in them and `prepare`'s pool get it as well as the
main process. Were they to die of it, the main process would stop with "DataLoader worker ...
is killed by signal" instead of at a batch boundary with a checkpoint. They ignore it instead;
the main process stops and shuts them down itself.

A SIGTERM from the child's own parent is the exception: it is how multiprocessing and the
loaders end their workers (at exit, `Pool.terminate`, a worker slow to finish), so it still ends
the child. A signal handler cannot see the sender; a thread that waits for SIGTERM with
`sigwaitinfo` can.
"""

from __future__ import annotations

import os
import signal
import threading

# Ctrl+C, a scheduler's SIGTERM, SLURM's warning before a time limit (configs/slurm.sbatch:
# `--signal=SIGUSR1@90`) and SIGUSR2, which other SLURM setups send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def leave_stop_signals_to_parent() -> None:
    """In a child process of a run (a loader worker, a pool's worker): ignore the stop signals,
    except a SIGTERM sent by the parent process itself, which ends the child at once."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)
    # Blocked in this thread and in the threads it starts, SIGTERM waits for `sigwaitinfo`.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=exit_on_sigterm_from, args=(os.getppid(),), name="sigterm", daemon=True).start()


def exit_on_sigterm_from(parent: int) -> None:
    """Wait for SIGTERM: from `parent`, leave at once; from anyone else, ignore it."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class LeavingStopSignals:
    """A loader's `worker_init_fn`: leaves the stop signals to the main process, then calls
    `then` (if any), so it composes with a worker_init_fn of one's own. Picklable, for workers
    that are spawned."""

    def __init__(self, then=None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        leave_stop_signals_to_parent()
        if self.then is not None:
            self.then(worker_id)
