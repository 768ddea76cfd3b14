"""The torchscript format: `model.torchscript.pt`, the traced network, checked by loading it
back with torch.jit."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from effnet_lightning.export.formats import Checked, Format
from effnet_lightning.export.job import ExportJob, compare_logits


def write(job: ExportJob, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, still what many servers load
        torch.jit.save(torch.jit.trace(job.model, job.reference.example), str(path))


def check(job: ExportJob, path: Path) -> Checked:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    return compare_logits(job, "torchscript", path, loaded)


FORMAT = Format(name="torchscript", file="model.torchscript.pt", rank=20, write=write, check=check, default=True)
