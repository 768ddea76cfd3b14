"""Callbacks the CLI always adds: the end-of-fit summary (and the record `test` and
`--ckpt_path last` read) and the W&B validation report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

RUN_RECORD = "latest_fit.json"


def run_record_path(root_dir: str | os.PathLike) -> Path:
    return Path(root_dir) / RUN_RECORD


def read_run_record(root_dir: str | os.PathLike) -> dict | None:
    path = run_record_path(root_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class FitSummary(L.Callback):
    """Prints one line at the end of fit (best val/acc, its checkpoint, wall time, training
    img/s) and records the run's checkpoints in <default_root_dir>/latest_fit.json."""

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()
        self.train_time, self.train_images = 0.0, 0
        self._record(trainer, finished=False)

    def on_train_epoch_start(self, trainer, pl_module):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # From the previous batch's end: loading time counts, validation does not.
        now = time.perf_counter()
        self.train_time += now - self.batch_start
        self.train_images += len(batch[1])
        self.batch_start = now

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, finished=False)

    def on_fit_end(self, trainer, pl_module):
        record = self._record(trainer, finished=True)
        wall = time.perf_counter() - self.start
        # Images on this rank x ranks: every rank trains on its own share of each step.
        rate = self.train_images * trainer.world_size / self.train_time if self.train_time else 0.0
        score = record["best_score"]
        best = f"{score:.4f}" if score is not None else "n/a"
        self._print(
            f"fit done: best val/acc {best} at {record['best_model_path'] or 'no checkpoint'}, "
            f"wall time {_format_duration(wall)}, training {rate:.1f} img/s"
        )

    @rank_zero_only
    def _print(self, line: str) -> None:
        print(line, flush=True)

    def _record(self, trainer, finished: bool) -> dict:
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
            _write_json_atomically(run_record_path(trainer.default_root_dir), record)
        return record


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
