"""The W&B run id in checkpoints, so a resumed fit logs on into the same run."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

WANDB_RUN_KEY = "wandb_run"  # in checkpoints: {"id": ..., "project": ...}


class WandbRunInCheckpoint(L.Callback):
    """Writes the W&B run's id into every checkpoint, so that a fit resumed from one (`--ckpt_path
    last`, a requeued SLURM job) logs on into the same run instead of starting another."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, _LightningWandbLogger):
                checkpoint[WANDB_RUN_KEY] = {"id": logger.version, "project": logger.name}


def saved_wandb_run(checkpoint: Mapping) -> dict | None:
    """The W&B run a checkpoint was logged to ({"id", "project"}), None if none."""
    run = checkpoint.get(WANDB_RUN_KEY)
    return dict(run) if isinstance(run, Mapping) and run.get("id") else None
