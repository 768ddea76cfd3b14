"""The per-class evaluation report of `validate` / `test`: a table and a confusion-matrix image next
to the checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from effnet_lightning.callbacks.atomic import write_atomically


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
        if pl_module.multilabel:
            return  # a confusion matrix is single-label; multi-label scores are the logged map and F1
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
