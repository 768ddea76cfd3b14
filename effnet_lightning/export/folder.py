"""`export_model`: the chosen formats and model.json written into an output folder, each format
checked before any file there is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from effnet_lightning.export.formats import Checked, check_formats, default_formats, registered
from effnet_lightning.export.job import ExportJob, Reference
from effnet_lightning.export.onnx_int8 import Int8Check


def export_model(
    model: torch.nn.Module,
    output_dir: str | Path,
    *,
    class_names: list[str],
    formats: list[str] | tuple[str, ...] | None = None,
    tolerance: float = 1e-4,
    opset: int | None = None,
    source: str | None = None,
    evaluation: dict[str, str] | None = None,
    hub_repo: str | None = None,
    int8: Int8Check | None = None,
    thresholds: list[float] | None = None,
) -> dict:
    """Write the chosen formats (None: the defaults) and model.json into output_dir (other files
    there stay); returns the JSON's content. The variant, preprocessing and build options come
    from the network's `provenance`; `evaluation` ({stage: report markdown}) and `hub_repo`
    (where it will be pushed) go into the hub format's model card; `int8` is what the onnx_int8
    format needs; `thresholds` (a multi-label model's, one per class) go into model.json. Raises
    ValueError, writing nothing, when a reloaded export's logits differ by more than
    `tolerance`, or when a format refuses the network (hub: one timm cannot build)."""
    formats = default_formats() if formats is None else tuple(formats)
    check_formats(formats)
    out = Path(output_dir).expanduser()
    model = model.float().eval().to(device="cpu", memory_format=torch.contiguous_format)
    job = ExportJob(
        model=model,
        class_names=tuple(class_names),
        formats=tuple(formats),
        # Written into a hidden side folder and moved into output_dir file by file once every check
        # has passed: a failed export replaces nothing, and other files in output_dir are left alone.
        work=out / f".export-partial-{os.getpid()}",
        out=out,
        reference=Reference.of(model),
        tolerance=tolerance,
        opset=opset,
        source=source,
        evaluation=evaluation or {},
        hub_repo=hub_repo,
        int8=int8,
        thresholds=tuple(thresholds) if thresholds is not None else None,
    )
    for fmt in registered().values():  # refused before anything is exported
        if fmt.name in formats and fmt.refuse:
            fmt.refuse(job)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(job.work, ignore_errors=True)
    job.work.mkdir()
    try:
        info = write_formats(job)
        for name in [*info["files"].values(), "model.json"]:
            if (out / name).is_dir():  # a folder (the hub format) replaces the last export's
                shutil.rmtree(out / name)
            os.replace(job.work / name, out / name)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)
    print(
        f"export: done, {len(info['files'])} formats in {out} (class names and preprocessing in {out / 'model.json'})"
    )
    return info


def write_formats(job: ExportJob) -> dict:
    """Each of the job's formats written into `job.work` and checked, in the order asked, then
    model.json beside them; returns model.json's content."""
    formats = registered()
    files, checks = {}, {}
    for name in job.formats:
        fmt = formats[name]
        fmt.write(job, job.work / fmt.file)
        checks[name] = fmt.check(job, job.work / fmt.file)
        files[name] = fmt.file
    info = model_json(job, files, checks)
    (job.work / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _task(classes: list[str], thresholds: tuple[float, ...] | None) -> dict:
    """model.json's task and output: softmax over the classes, or (multi-label) a sigmoid per
    class, each called at or above its threshold."""
    if thresholds is None:
        return {"task": "multiclass", "output": {"name": "logits", "shape": ["batch", len(classes)]}}
    output = {"name": "logits", "shape": ["batch", len(classes)], "note": "sigmoid per class; called at its threshold"}
    return {"task": "multilabel", "thresholds": dict(zip(classes, thresholds)), "output": output}


def model_json(job: ExportJob, files: dict[str, str], checks: dict[str, Checked]) -> dict:
    """What model.json says: the network, its classes and preprocessing, its input and output,
    the files written and what their checks measured."""
    provenance, classes = job.model.provenance, list(job.class_names)
    size, channels = provenance.preprocessing.crop_size, provenance.build.in_channels
    return {
        "variant": job.model.variant.name,
        "num_classes": len(classes),
        "class_names": classes,
        "preprocessing": provenance.preprocessing.to_dict(),
        "model_options": provenance.build.changes(),
        "input": {
            "name": "images",
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "note": "RGB, resized, centre-cropped and normalised as in preprocessing",
        },
        **_task(classes, job.thresholds),
        "files": files,
        "max_abs_logit_difference": {
            name: check.logit_difference for name, check in checks.items() if check.logit_difference is not None
        },
        **{key: value for check in checks.values() for key, value in check.record.items()},
        "source": job.source,
    }
