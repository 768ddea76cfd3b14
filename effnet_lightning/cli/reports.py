"""What a run leaves behind: the predictions of every image (CSV and JSON), the per-class
evaluation report (table and confusion-matrix image), the end-of-fit summary line, the W&B
validation report, and each run's configuration."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from effnet_lightning.cli.checkpoints import record_fit
from effnet_lightning.cli.console import format_duration, say
from effnet_lightning.cli.guards import write_atomically


def _gather_to_rank_zero(rows: list) -> list:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        return [row for part in gathered for row in part]
    return rows


class PredictionWriter(L.Callback):
    """Writes `predictions.csv` and `predictions.json` into `output_dir` at the end of predict:
    one row per image (each exactly once, also under DDP), its top-k classes and probabilities.

    Args:
        output_dir: None: <default_root_dir>/predictions.
        top_k: classes per image (at most the number of classes).
    """

    def __init__(self, output_dir: str | None = None, top_k: int = 5, enabled: bool = True):
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        self.enabled = enabled
        self.output_dir = output_dir
        self.top_k = top_k
        self.rows: list[tuple[int, list[int], list[float]]] = []

    def output_folder(self, trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")

    def on_predict_start(self, trainer, pl_module):
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        probs, classes = outputs["probs"].topk(min(self.top_k, outputs["probs"].shape[1]), dim=1)
        for index, c, p in zip(outputs["index"].tolist(), classes.tolist(), probs.tolist()):
            self.rows.append((index, c, p))

    def on_predict_epoch_end(self, trainer, pl_module):
        # An image that failed to decode was replaced by the next one in its batch: one row per
        # index, and the images without a row are reported as skipped.
        rows = sorted({row[0]: row for row in _gather_to_rank_zero(self.rows)}.values())
        if not trainer.is_global_zero:
            return
        paths = trainer.datamodule.predict_paths()
        predicted = {row[0] for row in rows}
        skipped = {
            **getattr(trainer.datamodule, "skipped", {}),
            **{path: "could not be decoded" for i, path in enumerate(paths) if i not in predicted},
        }
        names = pl_module.class_names
        out = self.output_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        k = len(rows[0][1]) if rows else 0

        def write_csv(f):
            writer = csv.writer(f)
            writer.writerow(["path"] + [f"{col}_{i}" for i in range(1, k + 1) for col in ("class", "prob")])
            for index, classes, probs in rows:
                writer.writerow([paths[index]] + [v for c, p in zip(classes, probs) for v in (names[c], f"{p:.6f}")])

        def write_json(f):
            json.dump(
                {
                    "checkpoint": trainer.ckpt_path,
                    "weights": pl_module.hparams.get("weights"),
                    "top_k": k,
                    "images": len(rows),
                    "skipped": skipped,
                    "predictions": [
                        {
                            "path": paths[index],
                            "top_k": [{"class": names[c], "prob": p} for c, p in zip(classes, probs)],
                        }
                        for index, classes, probs in rows
                    ],
                },
                f,
                indent=1,
            )
            f.write("\n")

        write_atomically(out / "predictions.csv", write_csv)
        write_atomically(out / "predictions.json", write_json)
        note = f" ({len(skipped)} unreadable files skipped: see 'skipped' in the .json)" if skipped else ""
        print(
            f"predict: {len(rows)} images, top-{k} classes written to {out / 'predictions.csv'} and .json{note}",
            flush=True,
        )


def per_class_rows(matrix: torch.Tensor, names: list[str]) -> list[dict]:
    """From a confusion matrix (rows: true class, columns: predicted): per class the number of
    images, correct predictions, accuracy (= recall), precision and F1."""
    matrix = matrix.double()
    correct, images, predicted = matrix.diag(), matrix.sum(1), matrix.sum(0)
    rows = []
    for i, name in enumerate(names):
        acc = correct[i] / images[i] if images[i] else float("nan")
        prec = correct[i] / predicted[i] if predicted[i] else float("nan")
        f1 = 2 * prec * acc / (prec + acc) if images[i] and predicted[i] and prec + acc > 0 else 0.0
        rows.append(
            {
                "class": name,
                "images": int(images[i]),
                "correct": int(correct[i]),
                "accuracy": float(acc),
                "precision": float(prec),
                "f1": float(f1),
            }
        )
    return rows


def confusion_figure(matrix: torch.Tensor, names: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.45 * n, 40)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=100)
    shown = matrix.double() / matrix.sum(1, keepdim=True).clamp(min=1)  # share of each true class
    ax.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 50:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        int(matrix[i, j]),
                        ha="center",
                        va="center",
                        color="white" if shown[i, j] > 0.5 else "black",
                        fontsize=8,
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


class EvaluationReport(L.Callback):
    """After `validate` and `test` (not the validations inside fit): a per-class table
    (`<checkpoint>.<stage>-per-class.csv` and `<checkpoint>.<stage>-report.md`) and the confusion matrix
    (`<checkpoint>.<stage>-confusion.png`) next to the checkpoint evaluated (without one: in
    <default_root_dir>/reports), and both to W&B when it is on."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._report(trainer, pl_module, "val", pl_module.val_confusion)

    def on_test_epoch_end(self, trainer, pl_module):
        self._report(trainer, pl_module, "test", pl_module.test_confusion)

    def _report(self, trainer, pl_module, stage: str, confusion) -> None:
        matrix = confusion.compute().cpu()  # a collective: every rank calls it
        if not trainer.is_global_zero:
            return
        names = pl_module.class_names
        rows = per_class_rows(matrix, names)
        base = evaluation_base(trainer)
        base.parent.mkdir(parents=True, exist_ok=True)
        prefix = report_prefix(base, stage)
        total = int(matrix.sum())
        overall = float(matrix.diag().sum() / max(total, 1))

        def fmt(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{v:.4f}"  # nan: no images / no predictions

        def write_csv(f):
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        def write_md(f):
            f.write(f"# {stage} report: {trainer.ckpt_path or 'pretrained weights'}\n\n")
            f.write(f"{total} images, accuracy {overall:.4f}. Accuracy of a class = correct / its images (recall).\n\n")
            f.write("| class | images | correct | accuracy | precision | F1 |\n|---|---:|---:|---:|---:|---:|\n")
            for r in rows:
                f.write(
                    f"| {r['class']} | {r['images']} | {r['correct']} | {fmt(r['accuracy'])} | "
                    f"{fmt(r['precision'])} | {fmt(r['f1'])} |\n"
                )
            f.write(f"\n![confusion matrix]({Path(prefix).name}-confusion.png)\n")

        write_atomically(Path(f"{prefix}-per-class.csv"), write_csv)
        write_atomically(Path(f"{prefix}-report.md"), write_md)
        fig = confusion_figure(matrix, names, f"{stage}: accuracy {overall:.4f} on {total} images")
        fig.savefig(f"{prefix}-confusion.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        print(f"{stage} report: {prefix}-report.md, {prefix}-per-class.csv, {prefix}-confusion.png", flush=True)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers:
            import wandb

            table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            for lg in loggers:
                lg.experiment.log(
                    {f"{stage}/per_class": table, f"{stage}/confusion": wandb.Image(f"{prefix}-confusion.png")}
                )


class LearningRateLog(LearningRateMonitor):
    """Lightning's LearningRateMonitor, with the `enabled` switch every always-on callback has."""

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        enabled: bool = True,
    ):
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self.enabled = enabled


class FitSummary(L.Callback):
    """Prints one line at the end of fit (best val/acc, its checkpoint, wall time, training
    img/s and the share of training time spent waiting for data) and records the run's
    checkpoints in <default_root_dir>/latest_fit.json."""

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
        say(
            f"fit done: best val/acc {best} at {record['best_model_path'] or 'no checkpoint'}, "
            f"wall time {format_duration(wall)}, training {rate:.1f} img/s ({waiting:.0%} waiting for data)"
        )


class WandbValidationReport(L.Callback):
    """At the end of each validation: sample predictions and the confusion matrix, logged to W&B
    (nothing happens with other loggers).

    The `num_samples` samples (at most) come from batches spread evenly over the epoch (in a split
    sorted by class the first batch holds one class), preferring classes not shown yet.
    The confusion matrix is logged as a table of its non-zero cells (true, predicted, count) and as
    the picture of `confusion_figure`: both stay small with 1,000 classes, unlike a row per image.
    """

    def __init__(self, num_samples: int = 16, enabled: bool = True):
        if num_samples < 0:
            raise ValueError(f"num_samples must be 0 or more, got {num_samples}")
        self.num_samples, self.enabled = num_samples, enabled
        self.samples: list[tuple] = []  # (HWC uint8 image, true class, predicted class)

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
        labels = (targets.argmax(1) if targets.ndim == 2 else targets).tolist()
        picked = self.pick(labels, count, {t for _, t, _ in self.samples})
        pre = pl_module.hparams.preprocessing
        images = self.to_uint8(batch[0][picked].detach().cpu(), pre["mean"], pre["std"])
        preds = outputs["preds"][picked].tolist()
        self.samples += zip(images, [labels[i] for i in picked], preds)

    def on_validation_epoch_end(self, trainer, pl_module):
        loggers = self._wandb_loggers(trainer)
        if trainer.sanity_checking or not loggers:  # the same on every rank
            return
        matrix = pl_module.val_confusion.compute().cpu()  # a collective: every rank calls it
        if not trainer.is_global_zero:
            return
        import wandb

        names = pl_module.class_names
        true, pred = matrix.nonzero(as_tuple=True)
        cells = [[names[t], names[p], c] for t, p, c in zip(true.tolist(), pred.tolist(), matrix[true, pred].tolist())]
        total = int(matrix.sum())
        accuracy = float(matrix.diag().sum()) / max(total, 1)
        title = f"val epoch {trainer.current_epoch}: accuracy {accuracy:.4f} on {total} images"
        fig = confusion_figure(matrix, names, title)
        import matplotlib.pyplot as plt  # (after confusion_figure has chosen the backend)

        log = {
            "val/confusion_matrix": wandb.Image(fig),
            "val/confusion_matrix_table": wandb.Table(columns=["true", "predicted", "count"], data=cells),
            "trainer/global_step": trainer.global_step,
        }
        plt.close(fig)
        if self.samples:
            log["val/predictions"] = [
                wandb.Image(img, caption=f"pred {names[p]} / true {names[t]}") for img, t, p in self.samples
            ]
        for lg in loggers:
            lg.experiment.log(log)


class RunConfig(SaveConfigCallback):
    """Writes the full configuration of each run where that run leaves its results, so no run
    replaces another's: a fit's next to its checkpoints (`config.yaml`; a resumed fit in the
    same folder adds `config-2.yaml`, ...), validate / test beside their report
    (`<checkpoint>.<stage>-config.yaml`), predict in its output folder, export in the export
    folder (as `predict-config.yaml` / `export-config.yaml` in a fit's checkpoint folder)."""

    def __init__(self, parser, config, **kwargs):
        super().__init__(parser, config, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage) -> None:
        """Nothing at setup: the checkpoint folder and the checkpoint evaluated are known only
        once the run starts (the hooks below)."""

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and trainer.is_global_zero:
            self.write(Path(f"{evaluation_base(trainer)}.val-config.yaml"))

    def on_test_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write(Path(f"{evaluation_base(trainer)}.test-config.yaml"))

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            writer = next((c for c in trainer.callbacks if isinstance(c, PredictionWriter)), None)
            folder = writer.output_folder(trainer) if writer else Path(trainer.default_root_dir) / "predictions"
            self.write_into(folder, "predict")

    def on_fit_start(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if not trainer.is_global_zero or not isinstance(ckpt, ModelCheckpoint) or not ckpt.dirpath:
            return
        folder = Path(ckpt.dirpath)
        path, n = folder / "config.yaml", 1
        while path.exists():
            n += 1
            path = folder / f"config-{n}.yaml"
        self.write(path)

    def write_into(self, folder: Path, subcommand: str) -> None:
        """`folder/config.yaml`, or `<subcommand>-config.yaml` where `folder` is a fit's checkpoint
        folder that already has its fit's `config.yaml`."""
        path = folder / "config.yaml"
        if path.exists() and any(folder.glob("*.ckpt")):
            path = folder / f"{subcommand}-config.yaml"
        self.write(path)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.parser.dump(self.config, skip_none=False)
        write_atomically(path, lambda f: f.write(text))


def report_prefix(base: Path, stage: str) -> str:
    """`<checkpoint without suffix>.<stage>`: the start of every report file's name."""
    return f"{base}.{stage}"


def saved_reports(checkpoint: str) -> dict[str, str]:
    """{stage: report markdown} of the test and validate runs evaluated on `checkpoint`."""
    base = Path(checkpoint).with_suffix("")
    found = {stage: Path(f"{report_prefix(base, stage)}-report.md") for stage in ("test", "val")}
    return {stage: path.read_text() for stage, path in found.items() if path.is_file()}


def evaluation_base(trainer) -> Path:
    """Where validate / test put their files: beside the checkpoint they evaluate, else under
    <default_root_dir>/reports."""
    if trainer.ckpt_path:
        return Path(trainer.ckpt_path).with_suffix("")
    return Path(trainer.default_root_dir) / "reports" / "pretrained"
