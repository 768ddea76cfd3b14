"""Sample predictions and the confusion matrix (multi-label: the per-class table and the
precision-recall curves) of each validation, logged to W&B."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from effnet_lightning.callbacks.evaluation_report import (
    confusion_figure,
    multilabel_rows,
    precision_recall_figure,
)


class WandbValidationReport(L.Callback):
    """At the end of each validation: sample predictions and the confusion matrix, logged to W&B
    (nothing happens with other loggers). For a multi-label model, the samples' captions name
    every label called and every true one, and the confusion matrix's place is taken by the
    per-class table (AP, threshold, precision, recall, F1) and the precision-recall curves, at
    the thresholds this validation chooses.

    The `num_samples` samples (at most) come from batches spread evenly over the epoch (in a split
    sorted by class the first batch holds one class), preferring classes not shown yet.
    The confusion matrix is logged as a table of its non-zero cells (true, predicted, count) and as
    the picture of `confusion_figure`: both stay small with 1,000 classes, unlike a row per image.
    """

    def __init__(self, num_samples: int = 16, enabled: bool = True):
        if num_samples < 0:
            raise ValueError(f"num_samples must be 0 or more, got {num_samples}")
        self.num_samples, self.enabled = num_samples, enabled
        # (HWC uint8 image, true class, predicted class); multi-label: (image, true classes, the
        # classes' scores), the scores turned into the classes called once the epoch's thresholds are chosen
        self.samples: list[tuple] = []

    @staticmethod
    def _wandb_loggers(trainer) -> list:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    @staticmethod
    def samples_in_batch(batch_idx: int, num_batches: float, num_samples: int) -> int:
        """How many of the samples batch `batch_idx` gives: sample k comes from batch
        (k + 1/2) x num_batches / num_samples (num_batches: a count, or inf)."""
        if num_batches == float("inf"):  # a loader of unknown length: the first batches
            num_batches = num_samples
        return sum(int((k + 0.5) * num_batches / num_samples) == batch_idx for k in range(num_samples))

    @staticmethod
    def pick(labels: list[int], count: int, shown: set[int]) -> list[int]:
        """Positions of `count` images in a batch: evenly spaced, each moved to the nearest image of
        a class not shown yet where the batch has one."""
        shown, picked = set(shown), []
        count = min(count, len(labels))
        for j in range(count):
            target = (j + 0.5) * len(labels) / count
            free = sorted((i for i in range(len(labels)) if i not in picked), key=lambda i: abs(i + 0.5 - target))
            i = next((i for i in free if labels[i] not in shown), free[0])
            picked.append(i)
            shown.add(labels[i])
        return picked

    @staticmethod
    def to_uint8(images: torch.Tensor, mean, std) -> list:
        """Normalised NCHW images as HWC uint8 arrays: wandb writes float arrays as uint8 without
        scaling, which turns [0, 1] pictures black."""
        mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        pixels = ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return [img.permute(1, 2, 0).contiguous().numpy() for img in pixels]

    def on_validation_epoch_start(self, trainer, pl_module):
        self.samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or dataloader_idx or not trainer.is_global_zero or not self._wandb_loggers(trainer):
            return
        count = self.samples_in_batch(batch_idx, trainer.num_val_batches[dataloader_idx], self.num_samples)
        if not count:
            return
        targets = batch[1]
        labels = (targets.argmax(1) if targets.ndim == 2 else targets).tolist()  # multi-label: the first
        shown = {c for _, true, _ in self.samples for c in (true if isinstance(true, tuple) else (true,))}
        picked = self.pick(labels, count, shown)
        pre = pl_module.hparams.preprocessing
        images = self.to_uint8(batch[0][picked].detach().cpu(), pre["mean"], pre["std"])
        if pl_module.multilabel:
            true = [self._classes(targets[i] > 0.5) for i in picked]
            self.samples += zip(images, true, outputs["probs"][picked].cpu())
        else:
            self.samples += zip(images, [labels[i] for i in picked], outputs["preds"][picked].tolist())

    @staticmethod
    def _classes(called: torch.Tensor) -> tuple[int, ...]:
        return tuple(called.nonzero().flatten().tolist())

    def on_validation_epoch_end(self, trainer, pl_module):
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or not loggers:  # the same on every rank
            return
        # A collective first: every rank calls it.
        log = (
            self._multilabel_log(trainer, pl_module)
            if pl_module.multilabel
            else self._confusion_log(trainer, pl_module)
        )
        if not trainer.is_global_zero:
            return
        import wandb

        names = pl_module.class_names
        if self.samples:
            log["val/predictions"] = [
                wandb.Image(img, caption=f"pred {self._names(p, names)} / true {self._names(t, names)}")
                for img, t, p in self.samples
            ]
        log["trainer/global_step"] = trainer.global_step
        for lg in loggers:
            lg.experiment.log(log)

    @staticmethod
    def _names(classes, names: list[str]) -> str:
        if isinstance(classes, tuple):
            return " ".join(names[c] for c in classes) or "none"
        return names[classes]

    @staticmethod
    def _confusion_log(trainer, pl_module) -> dict:
        """The confusion matrix as a picture and as a table of its non-zero cells."""
        matrix = pl_module.val_confusion.compute().cpu()  # a collective
        if not trainer.is_global_zero:
            return {}
        import wandb

        names = pl_module.class_names
        true, pred = matrix.nonzero(as_tuple=True)
        cells = [[names[t], names[p], c] for t, p, c in zip(true.tolist(), pred.tolist(), matrix[true, pred].tolist())]
        total = int(matrix.sum())
        accuracy = float(matrix.diag().sum()) / max(total, 1)
        title = f"val epoch {trainer.current_epoch}: accuracy {accuracy:.4f} on {total} images"
        fig = confusion_figure(matrix, names, title)
        import matplotlib.pyplot as plt  # (after the figure has chosen the backend)

        log = {
            "val/confusion_matrix": wandb.Image(fig),
            "val/confusion_matrix_table": wandb.Table(columns=["true", "predicted", "count"], data=cells),
        }
        plt.close(fig)
        return log

    def _multilabel_log(self, trainer, pl_module) -> dict:
        """The per-class table and the precision-recall curves at the thresholds this validation
        chooses (the ones its F1 is logged at); the samples' labels called at them."""
        scored = pl_module.scores["val"].scored_pass()  # a collective
        if not trainer.is_global_zero:
            return {}
        import wandb

        probs, targets, thresholds = scored.probs, scored.targets, scored.thresholds
        self.samples = [(img, true, self._classes(scores >= thresholds)) for img, true, scores in self.samples]
        rows = multilabel_rows(probs, targets, thresholds, pl_module.class_names)
        title = f"val epoch {trainer.current_epoch}: precision and recall of {len(probs)} images"
        fig = precision_recall_figure(probs, targets, rows, title)
        import matplotlib.pyplot as plt  # (after the figure has chosen the backend)

        log = {
            "val/per_class": wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows]),
            "val/precision_recall": wandb.Image(fig),
        }
        plt.close(fig)
        return log
