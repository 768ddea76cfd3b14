"""The safetensors format: `model.safetensors`, the weights in this project's key names with the
variant and class count as metadata, checked by building the network from it with
`create_model` the way a user would."""

from __future__ import annotations

from pathlib import Path

from effnet_lightning.export.formats import Checked, Format
from effnet_lightning.export.job import ExportJob, compare_logits
from effnet_lightning.models.factory import create_model


def write(job: ExportJob, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in job.model.state_dict().items()}
    metadata = {"variant": job.model.variant.name, "num_classes": str(len(job.class_names))}
    save_file(state, str(path), metadata=metadata)


def check(job: ExportJob, path: Path) -> Checked:
    build_options = job.model.provenance.build.changes()
    loaded = create_model(
        job.model.variant.name, num_classes=len(job.class_names), weights=str(path), **build_options
    ).eval()
    return compare_logits(job, "safetensors", path, loaded)


FORMAT = Format(name="safetensors", file="model.safetensors", rank=30, write=write, check=check, default=True)
