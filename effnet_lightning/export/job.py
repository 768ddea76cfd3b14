"""One export (`ExportJob`): what to export, where the files go, and what each format's check
compares against; `compare_logits` is the check every format that reloads a network shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from effnet_lightning.export.formats import Checked

if TYPE_CHECKING:
    from effnet_lightning.export.onnx_int8 import Int8Check


@dataclass(frozen=True)
class Reference:
    """What the checks compare against: the PyTorch model's logits on fixed random images."""

    example: torch.Tensor  # the input traced or exported
    images: torch.Tensor  # the input every reloaded export runs on: another batch size than the traced one
    logits: torch.Tensor  # the PyTorch model's for `images`

    @classmethod
    def of(cls, model: torch.nn.Module) -> Reference:
        size, channels = model.provenance.preprocessing.crop_size, model.provenance.build.in_channels

        def images(batch: int, seed: int) -> torch.Tensor:
            return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))

        example, checked = images(2, seed=0), images(3, seed=1)
        with torch.no_grad():
            return cls(example=example, images=checked, logits=model(checked))


@dataclass(frozen=True)
class ExportJob:
    """What to export (the network, its classes, the formats, what the model card says), where
    (written into `work`, moved into `out` once every check has passed) and what the checks
    compare against and allow."""

    model: torch.nn.Module  # float32, eval mode, on the CPU
    class_names: tuple[str, ...]
    formats: tuple[str, ...]
    work: Path
    out: Path
    reference: Reference
    tolerance: float = 1e-4  # largest allowed |logit difference| of a reloaded export
    opset: int | None = None  # ONNX opset; None: torch's default
    source: str | None = None  # the checkpoint or weights exported, recorded in model.json and the model card
    evaluation: dict[str, str] = field(default_factory=dict)  # {stage: report markdown}, for the model card
    hub_repo: str | None = None  # where the hub folder will be pushed, for the model card
    int8: Int8Check | None = None  # what the onnx_int8 format calibrates on and is measured against
    thresholds: tuple[float, ...] | None = None  # a multi-label model's, one per class


def compare_logits(job: ExportJob, name: str, path: Path, run: Callable[[torch.Tensor], torch.Tensor]) -> Checked:
    """The check of format `name`: `run` (its file at `path`, loaded back) against the PyTorch
    model on the reference images; raises ValueError beyond `job.tolerance`."""
    with torch.no_grad():
        diff = (run(job.reference.images) - job.reference.logits).abs().max().item()
    print(f"export: {name:<11} {job.out / path.name}  max |logit difference| vs PyTorch {diff:.2e}", flush=True)
    if not diff <= job.tolerance:
        raise ValueError(
            f"the {name} export gives logits {diff:.2e} away from PyTorch's (tolerance {job.tolerance:g}): "
            f"nothing was written to {job.out}; re-run with EFFNET_DEBUG=1 and report it"
        )
    return Checked(logit_difference=diff)
