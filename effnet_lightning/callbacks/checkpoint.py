"""The checkpoint callback: Lightning's ModelCheckpoint with a `last` checkpoint on a stop signal,
the run record updated after every file, and best checkpoints deleted by hand forgotten."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from effnet_lightning.callbacks.run_record import record_fit
from effnet_lightning.compat import CheckpointHooks, save_last_checkpoint, saved_at_this_step
from effnet_lightning.console import say


# ModelCheckpoint has no public way to save `last` on demand or to hook each save: its private
# machinery for that is used through effnet_lightning/compat.py (CheckpointHooks: `after_save`).
class Checkpoint(CheckpointHooks, ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` follows every epoch (Lightning
    writes it only together with a new top-k checkpoint, so after an epoch that did not
    improve the monitored metric, "last" would be an older state and a resume would lose work),
    that a fit stopped by SIGTERM or Ctrl+C writes `last.ckpt` where it stopped, and that every
    save updates <default_root_dir>/latest_fit.json. `enabled=False` (`--checkpoint.enabled
    false`) writes no checkpoints."""

    def __init__(self, *args, enabled: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.enabled = enabled

    def on_exception(self, trainer, pl_module, exception):
        # Lightning stops for a signal at a batch boundary (a consistent state, agreed by all
        # processes); any other error may leave broken weights, which must not replace `last`.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING or not self.save_last:
            return
        save_last_checkpoint(self, trainer)
        say(
            f"fit stopped by a signal at step {trainer.global_step} (epoch {trainer.current_epoch}): saved "
            f"{self.last_model_path}; resume with `python cli.py fit ... --ckpt_path last`"
        )

    def after_save(self, trainer, filepath: str) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            record_fit(trainer, finished=False)  # a resume finds every checkpoint as soon as it exists

    def load_state_dict(self, state_dict: dict) -> None:
        # The same folder, written relative or absolute, is the same folder: keep the best
        # checkpoints known (Lightning compares the strings).
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) == os.path.realpath(self.dirpath):

            def here(path):  # the saved paths, spelt the way this run spells its folder
                return os.path.join(self.dirpath, os.path.basename(path)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": here(state_dict.get("best_model_path")),
                "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                "last_model_path": here(state_dict.get("last_model_path")),
                "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)
        self._forget_missing_checkpoints()

    def _forget_missing_checkpoints(self) -> None:
        """Best checkpoints deleted since they were saved are no longer candidates."""
        kept = {path: score for path, score in self.best_k_models.items() if os.path.isfile(path)}
        if kept == self.best_k_models:
            return
        self.best_k_models = kept
        better, worse = (max, min) if self.mode == "max" else (min, max)
        if kept:
            self.best_model_path = better(kept, key=kept.get)
            self.best_model_score = kept[self.best_model_path]
            self.kth_best_model_path = worse(kept, key=kept.get)
            self.kth_value = kept[self.kth_best_model_path]
        else:
            self.best_model_path, self.best_model_score, self.kth_best_model_path = "", None, ""
            self.kth_value = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)

    def on_train_epoch_end(self, trainer, pl_module):
        # After the epoch's validation and top-k choice (saving earlier would make Lightning skip
        # the top-k checkpoint of this step). Lightning writes "last" with every save, so nothing
        # saved at this step (its skip check) means "last" is out of date.
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not saved_at_this_step(self, trainer):
            save_last_checkpoint(self, trainer)
