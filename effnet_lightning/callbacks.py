"""Callbacks the CLI always adds: the end-of-fit summary (and the record `test` and
`--ckpt_path last` read), the W&B validation report, and the EMA of the weights (off unless
its decay is set)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from effnet_lightning.guards import write_atomically

RUN_RECORD = "latest_fit.json"


def run_record_path(root_dir: str | os.PathLike) -> Path:
    return Path(root_dir) / RUN_RECORD


def read_run_record(root_dir: str | os.PathLike) -> dict | None:
    path = run_record_path(root_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that `last.ckpt` follows every epoch (Lightning
    writes it only together with a new top-k checkpoint, so after an epoch that did not
    improve the monitored metric, "last" would be an older state and a resume would lose work),
    that a fit stopped by SIGTERM or Ctrl+C writes `last.ckpt` where it stopped, and that every
    save updates <default_root_dir>/latest_fit.json."""

    def on_exception(self, trainer, pl_module, exception):
        # Lightning stops for a signal at a batch boundary (a consistent state, agreed by all
        # processes); any other error may leave broken weights, which must not replace `last`.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING or not self.save_last:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        _say(f"fit stopped by a signal at step {trainer.global_step} (epoch {trainer.current_epoch}): saved "
             f"{self.last_model_path}; resume with `python cli.py fit ... --ckpt_path last`")  # fmt: skip

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
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
                **state_dict, "dirpath": self.dirpath, "best_model_path": here(state_dict.get("best_model_path")),
                "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                "last_model_path": here(state_dict.get("last_model_path")),
                "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()},
            }  # fmt: skip
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
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def record_fit(trainer, finished: bool) -> dict:
    """Write <default_root_dir>/latest_fit.json (rank 0): the run's checkpoint folder, best and
    last checkpoints. `--ckpt_path last|best` and test / predict / export read it."""
    ckpt = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    score = ckpt.best_model_score if ckpt else None
    record = {
        "finished": finished,
        "checkpoint_dir": str(ckpt.dirpath) if ckpt and ckpt.dirpath else None,
        "best_model_path": ckpt.best_model_path if ckpt else "",
        "best_score": float(score) if score is not None else None,
        "last_model_path": ckpt.last_model_path if ckpt else "",
    }
    if trainer.is_global_zero:
        text = json.dumps(record, indent=2) + "\n"
        write_atomically(run_record_path(trainer.default_root_dir), lambda f: f.write(text))
    return record


class FitSummary(L.Callback):
    """Prints one line at the end of fit (best val/acc, its checkpoint, wall time, training
    img/s and the share of training time spent waiting for data) and records the run's
    checkpoints in <default_root_dir>/latest_fit.json."""

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
        _say(
            f"fit done: best val/acc {best} at {record['best_model_path'] or 'no checkpoint'}, "
            f"wall time {_format_duration(wall)}, training {rate:.1f} img/s ({waiting:.0%} waiting for data)"
        )


@rank_zero_only
def _say(line: str) -> None:
    print(line, flush=True)


def _format_duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


class WandbValidationReport(L.Callback):
    """At the end of each validation: a grid of sample predictions and the confusion matrix,
    logged to W&B (nothing happens with other loggers)."""

    def __init__(self, num_samples: int = 16):
        self.num_samples = num_samples
        self.samples = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero:
            n = self.num_samples
            self.samples = (batch[0][:n].detach().float().cpu(), batch[1][:n].cpu(), outputs["preds"][:n].cpu())

    def on_validation_epoch_end(self, trainer, pl_module):
        matrix = pl_module.val_confusion.compute().cpu()  # a collective: every rank calls it
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not loggers or not trainer.is_global_zero or self.samples is None:
            return
        import wandb

        names = pl_module.class_names
        pre = pl_module.hparams.preprocessing
        images, targets, preds = self.samples
        mean, std = torch.tensor(pre["mean"]).view(3, 1, 1), torch.tensor(pre["std"]).view(3, 1, 1)
        pictures = [
            wandb.Image((img * std + mean).clamp(0, 1), caption=f"pred {names[p]} / true {names[t]}")
            for img, t, p in zip(images, targets.tolist(), preds.tolist())
        ]
        y_true = [i for i in range(len(names)) for j in range(len(names)) for _ in range(int(matrix[i, j]))]
        y_pred = [j for i in range(len(names)) for j in range(len(names)) for _ in range(int(matrix[i, j]))]
        chart = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=names, title="val confusion")
        for lg in loggers:
            lg.experiment.log(
                {"val/predictions": pictures, "val/confusion_matrix": chart, "trainer/global_step": trainer.global_step}
            )


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
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - d)
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
        if self._average_model is not None:
            super().on_train_end(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        super().on_validation_epoch_start(trainer, pl_module)  # the EMA weights in, the raw ones aside
        self._swapped = self._average_model is not None
        self._raw = torch.zeros(3, dtype=torch.float64, device=pl_module.device)  # loss sum, correct, images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self._average_model is None or not self.validate_raw:
            return
        raw = self._average_model.module  # holds the raw weights while validation runs
        images, targets = batch
        with torch.no_grad():
            logits = raw.eval()(images)
            loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=pl_module.hparams.label_smoothing)
        self._raw += torch.stack([loss.double() * len(targets), (logits.argmax(1) == targets).sum().double(),
                                  torch.tensor(len(targets), dtype=torch.float64, device=logits.device)])  # fmt: skip

    def on_validation_epoch_end(self, trainer, pl_module):
        if self._average_model is not None and self.validate_raw and not trainer.sanity_checking:
            totals = trainer.strategy.reduce(self._raw, reduce_op="sum")
            if totals[2] > 0:
                pl_module.log("val/acc_raw", float(totals[1] / totals[2]), sync_dist=False)
                pl_module.log("val/loss_raw", float(totals[0] / totals[2]), sync_dist=False)
        super().on_validation_epoch_end(trainer, pl_module)  # the raw weights back
        self._swapped = False

    def on_exception(self, trainer, pl_module, exception):
        # Stopped during validation: the raw weights back before a checkpoint is written.
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._average_model is not None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Outside fit (test, predict) the checkpoint's state_dict already holds the EMA weights.
        if self._average_model is not None:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
