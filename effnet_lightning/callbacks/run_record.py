"""The record of the latest fit (<default_root_dir>/latest_fit.json): its checkpoint folder, best
and last checkpoints. This module is its one owner; `--ckpt_path last|best` and the evaluation
subcommands read it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from effnet_lightning.callbacks.atomic import write_atomically

RUN_RECORD = "latest_fit.json"


def run_record_path(root_dir: str | os.PathLike) -> Path:
    return Path(root_dir) / RUN_RECORD


def read_run_record(root_dir: str | os.PathLike) -> dict | None:
    path = run_record_path(root_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_fit(trainer, finished: bool) -> dict:
    """Write <default_root_dir>/latest_fit.json (rank 0): the run's checkpoint folder, best and
    last checkpoints, and the monitor the best is chosen by. `--ckpt_path last|best` and
    test / predict / export read it."""
    ckpt = trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None
    score = ckpt.best_model_score if ckpt else None
    record = {
        "finished": finished,
        "checkpoint_dir": str(ckpt.dirpath) if ckpt and ckpt.dirpath else None,
        "best_model_path": ckpt.best_model_path if ckpt else "",
        "monitor": ckpt.monitor if ckpt else None,  # what best_score is of
        "mode": ckpt.mode if ckpt else None,  # max: higher is better; min: lower
        "best_score": float(score) if score is not None else None,
        "last_model_path": ckpt.last_model_path if ckpt else "",
    }
    if trainer.is_global_zero:
        text = json.dumps(record, indent=2) + "\n"
        write_atomically(run_record_path(trainer.default_root_dir), lambda f: f.write(text))
    return record
