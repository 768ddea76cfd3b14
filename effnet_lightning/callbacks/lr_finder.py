"""Lightning's learning-rate finder at the start of fit, turned into this module's `lr`.

    python cli.py fit --config configs/finetune.yaml --data.root DIR --lr_find.enabled true

It trains `num_training_steps` batches with the rate rising from `min_lr` to `max_lr`, picks
the rate where the loss falls fastest, puts the network, optimizer and loops back as they were,
and fits with that rate. The sweep gives every parameter that trains one rate, so it finds the
rate of what trains in the first epoch: with `freeze_backbone_epochs` >= 1 (the fine-tuning
config) the classifier's, which is `lr`, and the backbone then follows at its
`backbone_lr_ratio` / `layer_lr_decay` share; without frozen epochs, the whole network's. The
rate found is the one for this run's global batch: with `lr_base_batch`, `lr` is set so that
the scaled rate equals it.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class LRFinder(LearningRateFinder):
    """Find `lr` before fitting (`enabled`); a resumed fit keeps its checkpoint's rate.

    Args:
        enabled: run the finder at the start of fit.
        min_lr, max_lr: the range swept.
        num_training_steps: optimizer steps of the sweep; at most the frozen epochs' steps, so
            that the sweep does not cross into the epochs where the backbone trains.
        mode: "exponential" or "linear" growth of the rate.
        early_stop_threshold: stop the sweep once the loss exceeds this multiple of the best
            loss so far (None: never).
    """

    def __init__(
        self,
        enabled: bool = False,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
    ):
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold, update_attr=False)
        self.enabled = enabled
        self.found: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        hp = pl_module.hparams
        if stage == "fit" and not hp.freeze_backbone_epochs and (hp.backbone_lr_ratio < 1 or hp.layer_lr_decay < 1):
            raise ValueError(
                "lr_find sweeps one rate for everything that trains in the first epoch: with backbone_lr_ratio or "
                "layer_lr_decay below 1, set --model.freeze_backbone_epochs 1 or more (it then finds the classifier's "
                "rate, and the backbone follows at its share)"
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path:
            rank_zero_info(f"lr_find: resuming, so the checkpoint's learning rate {pl_module.hparams.lr:g} is kept")
            return
        hp = pl_module.hparams
        requested = self._num_training_steps
        if hp.freeze_backbone_epochs:
            # configure_optimizers has set up the training data (estimated_stepping_batches), so its length is known.
            frozen_steps = hp.freeze_backbone_epochs * trainer.num_training_batches // trainer.accumulate_grad_batches
            self._num_training_steps = min(requested, max(1, frozen_steps))
        # The sweep's epoch freezes the backbone (requires_grad off); the optimizer made after it must
        # hold every parameter the fit trains, as the one made before it did.
        trains = [(p, p.requires_grad) for p in pl_module.parameters()]
        try:
            self.lr_find(trainer, pl_module)
        finally:
            self._num_training_steps = requested
            for p, flag in trains:
                p.requires_grad_(flag)
        self.found = self.optimal_lr.suggestion() if self.optimal_lr is not None else None
        if self.found is None:
            rank_zero_warn(f"lr_find: no rate found (too few steps?), keeping lr {hp.lr:g}")
            return
        lr, how = self.found, "for the classifier" if hp.freeze_backbone_epochs else "for the network"
        if hp.lr_base_batch:
            batch = trainer.datamodule.batch_size
            global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
            lr = self.found * hp.lr_base_batch / global_batch
            how += f", at the global batch of {global_batch}: lr {lr:.3g} per {hp.lr_base_batch} images (lr_base_batch)"
        hp.lr = lr
        trainer.strategy.setup_optimizers(trainer)  # the optimizer and schedule at the rate found
        rank_zero_info(
            f"lr_find: learning rate {self.found:.3g} {how}, after {len(self.optimal_lr.results['lr'])} steps"
        )
