"""The signals that stop a run, and how the processes a run starts leave them to it.

A scheduler (`timeout`, systemd, SLURM's `--signal`) sends its signal to the whole process
group: the loader workers, the shard readers in them and `prepare`'s pool get it as well as the
main process. Were they to die of it, the main process would stop with "DataLoader worker ...
is killed by signal" instead of at a batch boundary with a checkpoint. They ignore it instead;
the main process stops and shuts them down itself.
"""

from __future__ import annotations

import signal

# Ctrl+C, a scheduler's SIGTERM, SLURM's warning before a time limit (configs/slurm.sbatch:
# `--signal=SIGUSR1@90`) and SIGUSR2, which other SLURM setups send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# A multiprocessing pool ends its workers with SIGTERM when the main process stops (a pool
# whose workers ignore it never finishes closing), so a pool's workers keep SIGTERM's default.
POOL_STOP_SIGNALS = tuple(s for s in STOP_SIGNALS if s != signal.SIGTERM)


def ignore_stop_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> None:
    """In a child process of a run: leave the stop signals to the main process."""
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)


class IgnoringStopSignals:
    """A loader's `worker_init_fn`: ignores the stop signals, then calls `then` (if any), so it
    composes with a worker_init_fn of one's own. Picklable, for workers that are spawned."""

    def __init__(self, then=None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals()
        if self.then is not None:
            self.then(worker_id)
