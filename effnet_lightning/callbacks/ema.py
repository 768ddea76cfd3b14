"""Exponential moving average of the weights, on Lightning's `WeightAveraging`."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging

from effnet_lightning.compat import averaged_model, foreach_lerp_, swap_models


def ema_multi_avg_fn(decay: float, warmup: bool):
    """Exponential moving average of all tensors at once: avg = d * avg + (1 - d) * current,
    with d = min(decay, (1 + n) / (10 + n)) after n updates when `warmup` is on (TensorFlow's
    ExponentialMovingAverage with num_updates, as the EfficientNet paper's code uses it)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - d)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)  # counters such as num_batches_tracked

    return update


class EMA(WeightAveraging):
    """Exponential moving average of the weights (and BatchNorm statistics), built on
    Lightning's `WeightAveraging`. Off unless `decay` is set (`--ema.decay 0.9999`).

    Validation runs on the averaged weights, so `val/acc`, the checkpoint choice and the saved
    `state_dict` (what test, predict and export load) are the EMA's; the raw weights are kept
    in the checkpoint as `current_model_state` for resuming. With `validate_raw`, every
    validation also reports the raw weights as `val/acc_raw` and `val/loss_raw`.

    Args:
        decay: per update, e.g. 0.9999 (None: off).
        warmup: decay = min(decay, (1 + n) / (10 + n)) after n updates, so early averages
            are not dominated by the random initialisation.
        update_every_n_steps: update after every n-th optimizer step.
        validate_raw: also validate the raw weights (one more forward pass per val batch).
    """

    def __init__(
        self, decay: float | None = None, warmup: bool = True, update_every_n_steps: int = 1, validate_raw: bool = True
    ):
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"ema decay must be between 0 and 1, got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=ema_multi_avg_fn(decay or 0.0, warmup))
        self.decay, self.update_every_n_steps, self.validate_raw = decay, update_every_n_steps, validate_raw
        self._raw = None
        self._swapped = False  # the EMA weights are in the module (during validation)

    @property
    def enabled(self) -> bool:
        return self.decay is not None

    def setup(self, trainer, pl_module, stage):
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return self.enabled and step_idx is not None and step_idx % self.update_every_n_steps == 0

    def on_train_end(self, trainer, pl_module):
        if averaged_model(self) is not None:
            super().on_train_end(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        super().on_validation_epoch_start(trainer, pl_module)  # the EMA weights in, the raw ones aside
        self._swapped = averaged_model(self) is not None
        self._raw = torch.zeros(3, dtype=torch.float64, device=pl_module.device)  # loss sum, correct, images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if averaged_model(self) is None or not self.validate_raw or dataloader_idx:
            return
        raw = averaged_model(self).module  # holds the raw weights while validation runs
        images, targets = batch
        with torch.no_grad():
            logits = raw.eval()(images)
            loss = pl_module.loss(logits, targets, "val")
        correct = torch.zeros((), device=logits.device) if pl_module.multilabel else (logits.argmax(1) == targets).sum()
        self._raw += torch.stack(
            [
                loss.double() * len(targets),
                correct.double(),
                torch.tensor(len(targets), dtype=torch.float64, device=logits.device),
            ]
        )

    def on_validation_epoch_end(self, trainer, pl_module):
        if averaged_model(self) is not None and self.validate_raw and not trainer.sanity_checking:
            totals = trainer.strategy.reduce(self._raw, reduce_op="sum")
            if totals[2] > 0 and not pl_module.multilabel:  # (multi-label: the loss alone)
                pl_module.log("val/acc_raw", float(totals[1] / totals[2]), sync_dist=False)
            if totals[2] > 0:
                pl_module.log("val/loss_raw", float(totals[0] / totals[2]), sync_dist=False)
        super().on_validation_epoch_end(trainer, pl_module)  # the raw weights back
        self._swapped = False

    def on_exception(self, trainer, pl_module, exception):
        # Stopped during validation: the raw weights back before a checkpoint is written.
        if self._swapped:
            swap_models(self, pl_module)
            self._swapped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if averaged_model(self) is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Outside fit (test, predict) the checkpoint's state_dict already holds the EMA weights.
        if averaged_model(self) is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
