"""Predictions of every image, written as CSV and JSON by `predict`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import torch.distributed as dist

from effnet_lightning.callbacks.atomic import write_atomically
from effnet_lightning.contracts import SkippedFiles


def _gather_to_rank_zero(rows: list) -> list:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        return [row for part in gathered for row in part]
    return rows


class PredictionWriter(L.Callback):
    """Writes `predictions.csv` and `predictions.json` into `output_dir` at the end of predict:
    one row per image (each exactly once, also under DDP), its top-k classes and probabilities.
    A multi-label model's rows also give the labels at or above their class's threshold (its
    checkpoint's), first in the CSV (`labels`, separated by spaces), and the JSON the thresholds.

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
        self.rows: list[tuple[int, list[int], list[float], list[int]]] = []

    def output_folder(self, trainer) -> Path:
        return Path(self.output_dir or Path(trainer.default_root_dir) / "predictions")

    def on_predict_start(self, trainer, pl_module):
        self.rows = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        probs, classes = outputs["probs"].topk(min(self.top_k, outputs["probs"].shape[1]), dim=1)
        called = outputs.get("labels")
        called = [row.nonzero().flatten().tolist() for row in called] if called is not None else [[]] * len(probs)
        for index, c, p, labels in zip(outputs["index"].tolist(), classes.tolist(), probs.tolist(), called):
            self.rows.append((index, c, p, labels))

    def on_predict_epoch_end(self, trainer, pl_module):
        # An image that failed to decode was replaced by the next one in its batch: one row per
        # index, and the images without a row are reported as skipped.
        rows = sorted({row[0]: row for row in _gather_to_rank_zero(self.rows)}.values())
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        paths = datamodule.predict_paths()
        predicted = {row[0] for row in rows}
        skipped = {
            **(datamodule.skipped if isinstance(datamodule, SkippedFiles) else {}),
            **{path: "could not be decoded" for i, path in enumerate(paths) if i not in predicted},
        }
        names = pl_module.class_names
        out = self.output_folder(trainer)
        out.mkdir(parents=True, exist_ok=True)
        k = len(rows[0][1]) if rows else 0
        multilabel = getattr(pl_module, "multilabel", False)
        labels_column = ["labels"] if multilabel else []

        def write_csv(f):
            writer = csv.writer(f)
            writer.writerow(
                ["path", *labels_column] + [f"{col}_{i}" for i in range(1, k + 1) for col in ("class", "prob")]
            )
            for index, classes, probs, labels in rows:
                called = [" ".join(names[c] for c in labels)] if multilabel else []
                writer.writerow(
                    [paths[index], *called] + [v for c, p in zip(classes, probs) for v in (names[c], f"{p:.6f}")]
                )

        def entry(index, classes, probs, labels) -> dict:
            called = {"labels": [names[c] for c in labels]} if multilabel else {}
            return {
                "path": paths[index],
                **called,
                "top_k": [{"class": names[c], "prob": p} for c, p in zip(classes, probs)],
            }

        thresholds = {"thresholds": dict(zip(names, pl_module.thresholds.tolist()))} if multilabel else {}

        def write_json(f):
            json.dump(
                {
                    "checkpoint": trainer.ckpt_path,
                    "weights": pl_module.hparams.get("weights"),
                    "top_k": k,
                    "images": len(rows),
                    "skipped": skipped,
                    **thresholds,
                    "predictions": [entry(*row) for row in rows],
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
