"""The onnx format: `model.onnx` (dynamic batch size, input "images", output "logits"), checked
through onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from effnet_lightning.export.formats import Checked, Format
from effnet_lightning.export.job import ExportJob, compare_logits
from effnet_lightning.export.runtime import onnx_logits, onnx_session, onnxruntime_installed


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int | None,
    output_names: tuple[str, ...] = ("logits",),
    dynamic_size: bool = False,
) -> None:
    """`model` traced on `example` into the ONNX file at `path`, with a dynamic batch size (and,
    with `dynamic_size`, dynamic height and width)."""
    if not onnxruntime_installed():  # the file could not be checked: refused before the slow export
        raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime")
    dims = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        dims |= {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=list(output_names),
            dynamic_shapes={"x": dims},
            external_data=False,
            opset_version=opset,
            verbose=False,
        )


def write(job: ExportJob, path: Path) -> None:
    export_onnx(job.model, job.reference.example, path, job.opset)


def check(job: ExportJob, path: Path) -> Checked:
    session = onnx_session(path)
    return compare_logits(job, "onnx", path, lambda images: onnx_logits(session, images))


FORMAT = Format(name="onnx", file="model.onnx", rank=10, write=write, check=check, default=True)
