"""The per-class evaluation report of `validate` / `test`: a table and a picture next to the
checkpoint (single-label: the confusion matrix; multi-label: the precision-recall curves)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from effnet_lightning.callbacks.atomic import write_atomically
from effnet_lightning.training.multilabel import ScoredPass, per_class_scores, precision_recall_curve

HEADERS = {"ap": "AP", "f1": "F1"}  # the markdown table's names of the per-class columns


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


def multilabel_rows(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor, names: list[str]
) -> list[dict]:
    """Per class of a multi-label pass: the images holding it, its average precision, its
    threshold, and the precision, recall and F1 of calling it at that threshold."""
    scores = per_class_scores(probs, targets, thresholds)
    return [
        {
            "class": name,
            "images": int(scores["images"][i]),
            "ap": float(scores["ap"][i]),
            "threshold": float(thresholds[i]),
            "precision": float(scores["precision"][i]),
            "recall": float(scores["recall"][i]),
            "f1": float(scores["f1"][i]),
        }
        for i, name in enumerate(names)
    ]


def precision_recall_figure(probs: torch.Tensor, targets: torch.Tensor, rows: list[dict], title: str):
    """Each class's precision-recall curve (classes without images are left out), with a dot
    where its threshold calls it; the legend (up to 20 classes) gives each class's AP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    for i, row in enumerate(rows):
        if not row["images"]:
            continue
        precision, recall = precision_recall_curve(probs[:, i], targets[:, i])
        (line,) = ax.plot(recall.numpy(), precision.numpy(), label=f"{row['class']} (AP {row['ap']:.3f})")
        ax.plot([row["recall"]], [row["precision"]], "o", color=line.get_color())
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    if sum(bool(r["images"]) for r in rows) <= 20:
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


@dataclass
class Report:
    """What a report shows: the per-class rows, the line above the table, the picture and its name."""

    rows: list[dict]
    summary: str
    figure: object
    picture: str  # the picture's file name ends in -<picture>.png; W&B logs it as <stage>/<picture>


class EvaluationReport(L.Callback):
    """After `validate` and `test` (not the validations inside fit): a per-class table
    (`<checkpoint>.<stage>-per-class.csv` and `<checkpoint>.<stage>-report.md`) and a picture
    next to the checkpoint evaluated (without one: in <default_root_dir>/reports), and both to
    W&B when it is on. Single-label: accuracy, precision and F1 per class, and the confusion
    matrix (`-confusion.png`); multi-label: AP, threshold, precision, recall and F1 per class, and
    the precision-recall curves (`-precision_recall.png`)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._report(trainer, pl_module, "test")

    def _report(self, trainer, pl_module, stage: str) -> None:
        # What the pass gathered, from every process (a collective: every rank calls it).
        if pl_module.multilabel:
            scored = pl_module.scores[stage].scored_pass()
        else:
            matrix = (pl_module.val_confusion if stage == "val" else pl_module.test_confusion).compute().cpu()
        if not trainer.is_global_zero:
            return
        if pl_module.multilabel:
            content = multilabel_report(pl_module, stage, scored)
        else:
            content = single_label_report(pl_module, stage, matrix)
        base = evaluation_base(trainer)
        base.parent.mkdir(parents=True, exist_ok=True)
        prefix = report_prefix(base, stage)
        rows = content.rows
        picture = f"{prefix}-{content.picture}.png"

        def write_csv(f):
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        def write_md(f):
            columns = list(rows[0])
            f.write(f"# {stage} report: {trainer.ckpt_path or 'pretrained weights'}\n\n{content.summary}\n\n")
            f.write(f"| {' | '.join(HEADERS.get(c, c) for c in columns)} |\n")
            f.write(f"|---|{'---:|' * (len(columns) - 1)}\n")
            for r in rows:
                f.write(f"| {' | '.join(_cell(r[c]) for c in columns)} |\n")
            f.write(f"\n![{content.picture.replace('_', ' ')}]({Path(picture).name})\n")

        write_atomically(Path(f"{prefix}-per-class.csv"), write_csv)
        write_atomically(Path(f"{prefix}-report.md"), write_md)
        content.figure.savefig(picture)
        import matplotlib.pyplot as plt

        plt.close(content.figure)
        print(f"{stage} report: {prefix}-report.md, {prefix}-per-class.csv, {picture}", flush=True)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers:
            import wandb

            table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            for lg in loggers:
                lg.experiment.log({f"{stage}/per_class": table, f"{stage}/{content.picture}": wandb.Image(picture)})


def _cell(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"  # nan: no images / none called
    return str(value)


def single_label_report(pl_module, stage: str, matrix: torch.Tensor) -> Report:
    """Per class accuracy (= recall), precision and F1, and the confusion matrix."""
    names = pl_module.class_names
    total = int(matrix.sum())
    overall = float(matrix.diag().sum() / max(total, 1))
    summary = f"{total} images, accuracy {overall:.4f}. Accuracy of a class = correct / its images (recall)."
    figure = confusion_figure(matrix, names, f"{stage}: accuracy {overall:.4f} on {total} images")
    return Report(per_class_rows(matrix, names), summary, figure, "confusion")


def multilabel_report(pl_module, stage: str, scored: ScoredPass) -> Report:
    """Per class AP, threshold, precision, recall and F1, and the precision-recall curves. The
    thresholds are the ones the pass is scored at: chosen on these images in `validate`, the
    checkpoint's in `test`."""
    probs, targets = scored.probs, scored.targets
    rows = multilabel_rows(probs, targets, scored.thresholds, pl_module.class_names)
    aps = [r["ap"] for r in rows if r["images"]]
    mean_ap = sum(aps) / max(len(aps), 1)
    where = "chosen on these images" if pl_module.scores[stage].choose_thresholds else "the checkpoint's"
    summary = (
        f"{len(probs)} images, mAP {mean_ap:.4f}. Each class is called at its threshold ({where}); "
        "precision, recall and F1 are of those calls."
    )
    figure = precision_recall_figure(probs, targets, rows, f"{stage}: mAP {mean_ap:.4f} on {len(probs)} images")
    return Report(rows, summary, figure, "precision_recall")


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
