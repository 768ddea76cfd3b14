"""Progressive learning as a callback, configured under one key (`stages`):

    python cli.py fit --stages.count 4                      # 4 stages from half the size
    stages: {count: 4, start: 0.5, ramp: [randaugment, mixup, cutmix, dropout]}

The plan (`data/stages.py`) gives each epoch its stage from the epoch number and
`max_epochs` alone, so a fit resumed at an epoch boundary continues in its stage and every DDP
process trains at the same size. The batch size stays fixed, so the step-based learning-rate
schedule does not see stage changes.
"""

from __future__ import annotations

from functools import partial

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from effnet_lightning.contracts import ProgressiveStages
from effnet_lightning.data.stages import REGULARISERS, ProgressivePlan, Regulariser


class ProgressiveLearning(L.Callback):
    """Train in `count` stages of equal epochs: stage 0 at `start` x the training size, the last
    at the training size, the regularisers in `ramp` growing from mild to the run's own values
    (see `data/stages.py`). count 1: one stage, the plain run. The image size of every step is
    logged as `train/image_size`.

    Args:
        count: number of stages (1: off).
        start: stage 0's image size as a fraction of the training size.
        ramp: the regularisers that grow with the size: randaugment (magnitude, with
            --data.augment randaugment), mixup, cutmix (alpha, where on) and dropout.
    """

    def __init__(self, count: int = 1, start: float = 0.5, ramp: list[Regulariser] | None = None):
        self.plan = ProgressivePlan(count, start, tuple(REGULARISERS if ramp is None else ramp))
        self._announced: int | None = None

    @property
    def active(self) -> bool:
        return self.plan.count > 1

    def setup(self, trainer, pl_module, stage):
        if stage != "fit" or not self.active:
            return
        data = trainer.datamodule
        staged = isinstance(data, ProgressiveStages)
        if not staged:
            raise ValueError("--stages needs the image-folder data module (--data.root)")
        if not trainer.max_epochs or trainer.max_epochs < self.plan.count:
            raise ValueError(
                f"--stages.count {self.plan.count} needs --trainer.max_epochs of at least {self.plan.count} "
                f"(stages are shares of the epochs), got {trainer.max_epochs}"
            )
        if trainer.reload_dataloaders_every_n_epochs not in (0, 1):
            raise ValueError(
                "--stages rebuilds the training loader when a stage begins: drop "
                "--trainer.reload_dataloaders_every_n_epochs"
            )
        # The trainer asks the data module for its loaders every epoch; inside a stage it hands
        # back the same ones (Trainer has no per-epoch "reload now" switch).
        trainer.reload_dataloaders_every_n_epochs = 1
        hp = data.hparams
        final = {
            "randaugment": hp.randaugment_magnitude,
            "mixup": hp.mixup_alpha,
            "cutmix": hp.cutmix_alpha,
            "dropout": pl_module.model.dropout.p,
        }
        data.stage_at = partial(self.plan.stage, max_epochs=trainer.max_epochs, image_size=data.train_size, final=final)

    def on_train_start(self, trainer, pl_module):
        # A fit resumed in the middle of an epoch starts without `on_train_epoch_start` for it.
        if self.active:
            self._enter(trainer, pl_module, trainer.datamodule.next_epoch())

    def on_train_epoch_start(self, trainer, pl_module):
        if self.active:
            self._enter(trainer, pl_module, trainer.current_epoch)

    def _enter(self, trainer, pl_module, epoch: int) -> None:
        """The model's part of `epoch`'s stage (dropout), announced once per stage."""
        stage = trainer.datamodule.stage_at(epoch)
        pl_module.model.dropout.p = stage.dropout
        if stage.index != self._announced:
            self._announced = stage.index
            hp = trainer.datamodule.hparams
            on = {
                "randaugment": hp.augment == "randaugment",
                "mixup": hp.mixup_alpha > 0,
                "cutmix": hp.cutmix_alpha > 0,
                "dropout": True,
            }
            shown = tuple(name for name in self.plan.ramp if on[name])
            rank_zero_info(f"epoch {epoch}: {stage.describe(shown)}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.active:
            pl_module.log("train/image_size", float(batch[0].shape[-1]), on_step=True, on_epoch=False)
