"""A multi-process job that ends when one of its processes dies."""

from __future__ import annotations

import os
import sys
import threading

import lightning as L


class ProcessWatchdog(L.Callback):
    """A multi-process job ends when its rank-0 process dies, within `poll_seconds`: every other
    process on the machine watches its parent (rank 0 when `cli.py` launched the job, else
    torchrun's agent) and exits when it is gone, instead of waiting in a collective for the
    process-group timeout (30 minutes by default; configs/ddp.yaml sets 10). The other way
    round, Lightning's launcher already ends the job when a child process dies.

    Args:
        poll_seconds: how often to check.
    """

    def __init__(self, poll_seconds: float = 1.0, enabled: bool = True):
        self.poll_seconds, self.enabled = poll_seconds, enabled
        self._stop = threading.Event()

    def setup(self, trainer, pl_module, stage):
        if trainer.world_size > 1 and trainer.local_rank > 0:
            self._stop.clear()
            threading.Thread(target=self._watch_parent, args=(os.getppid(),), daemon=True).start()

    def teardown(self, trainer, pl_module, stage):
        self._stop.set()

    def _watch_parent(self, parent: int) -> None:
        while not self._stop.wait(self.poll_seconds):
            if os.getppid() != parent:
                print(
                    f"error: the job's main process ({parent}) is gone: ending this process too",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
