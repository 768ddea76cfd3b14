"""A stop at the first NaN or Inf loss, keeping the last good checkpoint."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; the message names the step and the checkpoint kept."""


class StopOnNonFiniteLoss(L.Callback):
    """Stops a fit at the first step whose training loss is NaN or Inf on any process, before
    anything is saved from the broken weights: the last checkpoint written stays the last good
    one.

    Args:
        enabled: check every step (one tiny all-reduce per step under DDP).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.enabled:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        value = float(loss.detach().float().sum()) if bad else "finite here, not finite on another process"
        raise NonFiniteLossError(
            f"the training loss is {value} at step {trainer.global_step} (epoch {trainer.current_epoch}): training "
            f"stopped and nothing was saved from these weights; {kept}. Lower --model.lr, set "
            f"--trainer.gradient_clip_val, or check the data, then resume with --ckpt_path last"
        )
