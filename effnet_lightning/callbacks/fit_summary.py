"""The one line a fit prints at its end: best score and checkpoint, wall time, images per second."""

from __future__ import annotations

import time

import lightning as L

from effnet_lightning.callbacks.run_record import record_fit
from effnet_lightning.console import format_duration, say


class FitSummary(L.Callback):
    """Prints one line at the end of fit (the best score of the checkpoint's monitor, val/acc or
    val/map, and its checkpoint, wall time, training img/s and the share of training time spent
    waiting for data) and records the run's checkpoints in <default_root_dir>/latest_fit.json."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()
        self.train_time, self.wait_time, self.train_images = 0.0, 0.0, 0
        record_fit(trainer, finished=False)

    def on_train_start(self, trainer, pl_module):
        self.batch_end = time.perf_counter()  # (a resume in mid-epoch has no epoch start)

    def on_train_epoch_start(self, trainer, pl_module):
        self.batch_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.wait_time += time.perf_counter() - self.batch_end  # the loader's part

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # From the previous batch's end: loading time counts, validation does not.
        now = time.perf_counter()
        self.train_time += now - self.batch_end
        self.train_images += len(batch[1])
        self.batch_end = now

    def on_fit_end(self, trainer, pl_module):
        record = record_fit(trainer, finished=True)
        wall = time.perf_counter() - self.start
        # Images on this rank x ranks: every rank trains on its own share of each step.
        rate = self.train_images * trainer.world_size / self.train_time if self.train_time else 0.0
        waiting = self.wait_time / self.train_time if self.train_time else 0.0
        score = record["best_score"]
        best = f"{score:.4f}" if score is not None else "n/a"
        monitor = record["monitor"] or "val/acc"
        say(
            f"fit done: best {monitor} {best} at {record['best_model_path'] or 'no checkpoint'}, "
            f"wall time {format_duration(wall)}, training {rate:.1f} img/s ({waiting:.0%} waiting for data)"
        )
