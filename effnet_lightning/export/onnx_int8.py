"""The onnx_int8 format: `model.int8.onnx`, the fp32 ONNX file statically quantized (QDQ,
per-channel int8 weights, uint8 activations, min-max calibration), checked by its top-1 drop
against the fp32 file on the validation images."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from effnet_lightning.export import onnx
from effnet_lightning.export.formats import Checked, Format
from effnet_lightning.export.job import ExportJob
from effnet_lightning.export.runtime import onnx_logits, onnx_session

# The accuracy drop is measured on the validation split, up to this many images (drawn with the
# data seed), held in memory as float tensors: a whole ImageNet validation set would not fit.
EVAL_IMAGES = 2000


@dataclass(frozen=True)
class Int8Check:
    """What INT8 export calibrates on and is measured against: images under the evaluation
    transform, and the largest allowed top-1 drop (in points) on the validation images."""

    calibration: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    max_drop: float = 1.0
    # (logits, multi-hot labels) -> mAP, for a multi-label model; None: top-1 accuracy.
    score: Callable[[torch.Tensor, torch.Tensor], float] | None = None


def int8_check(datamodule, calibration_images: int, max_drop: float, score=None) -> Int8Check:
    """`calibration_images` training images to calibrate on and the validation images (at most
    EVAL_IMAGES) to measure on, from the data module; `score`: see `Int8Check`."""
    if calibration_images < 1:
        raise ValueError(f"--calibration_images must be positive, got {calibration_images}")
    images, labels = datamodule.evaluation_images("val", EVAL_IMAGES)
    calibration, _ = datamodule.evaluation_images("train", calibration_images)
    return Int8Check(calibration, images, labels, max_drop, score)


def quantize_onnx_int8(fp32: Path, path: Path, calibration: torch.Tensor) -> None:
    """The fp32 ONNX file statically quantized into `path`, calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.split(16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    prepared = path.with_name(".prepared.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(path),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    prepared.unlink()


def measure_int8(fp32: Path, int8: Path, check: Int8Check) -> dict:
    """Top-1 of both files on the validation images (or `check.score`: a multi-label model's
    mAP), printed; raises ValueError when INT8 drops by more than `check.max_drop` points."""
    full, quantized = _logits(fp32, check.images), _logits(int8, check.images)
    if check.score is not None:
        return _measure_score(full, quantized, check)
    quality = {
        "calibration_images": len(check.calibration),
        "images": len(check.images),
        "top1_agreement": (full.argmax(1) == quantized.argmax(1)).float().mean().item(),
        "fp32_accuracy": (full.argmax(1) == check.labels).float().mean().item(),
        "int8_accuracy": (quantized.argmax(1) == check.labels).float().mean().item(),
    }
    quality["drop_points"] = 100 * (quality["fp32_accuracy"] - quality["int8_accuracy"])
    print(
        f"export: onnx_int8   {len(check.images)} validation images: top-1 agreement with fp32 "
        f"{quality['top1_agreement']:.4f}, accuracy {quality['fp32_accuracy']:.4f} (fp32) -> "
        f"{quality['int8_accuracy']:.4f} (int8), a drop of {quality['drop_points']:.2f} points"
        + (" (under 300 images: a rough estimate)" if len(check.images) < 300 else ""),
        flush=True,
    )
    if quality["drop_points"] > check.max_drop:
        raise ValueError(
            f"INT8 quantization drops top-1 by {quality['drop_points']:.2f} points on {len(check.images)} validation "
            f"images (allowed: --int8_max_drop {check.max_drop:g}): nothing was written; export onnx (fp32) instead"
        )
    return quality


def _measure_score(full: torch.Tensor, quantized: torch.Tensor, check: Int8Check) -> dict:
    """`measure_int8` by `check.score` (a multi-label model's mAP) of both files' logits."""
    quality = {
        "calibration_images": len(check.calibration),
        "images": len(check.images),
        "fp32_map": check.score(full, check.labels),
        "int8_map": check.score(quantized, check.labels),
    }
    quality["drop_points"] = 100 * (quality["fp32_map"] - quality["int8_map"])
    print(
        f"export: onnx_int8   {len(check.images)} validation images: mAP {quality['fp32_map']:.4f} (fp32) -> "
        f"{quality['int8_map']:.4f} (int8), a drop of {quality['drop_points']:.2f} points",
        flush=True,
    )
    if quality["drop_points"] > check.max_drop:
        raise ValueError(
            f"INT8 quantization drops mAP by {quality['drop_points']:.2f} points on {len(check.images)} validation "
            f"images (allowed: --int8_max_drop {check.max_drop:g}): nothing was written; export onnx (fp32) instead"
        )
    return quality


def _logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    session = onnx_session(path)
    return torch.cat([onnx_logits(session, batch) for batch in images.split(32)])


def _fp32_file(job: ExportJob) -> Path:
    """The onnx format's file when this export has written it already, else a hidden one."""
    written = job.work / onnx.FORMAT.file
    return written if written.exists() else job.work / ".fp32.onnx"


def write(job: ExportJob, path: Path) -> None:
    fp32 = _fp32_file(job)
    if not fp32.exists():
        onnx.export_onnx(job.model, job.reference.example, fp32, job.opset)
    quantize_onnx_int8(fp32, path, job.int8.calibration)


def check(job: ExportJob, path: Path) -> Checked:
    return Checked(record={"int8": measure_int8(_fp32_file(job), path, job.int8)})


def refuse(job: ExportJob) -> None:
    if job.int8 is None:
        raise ValueError("the onnx_int8 format needs images to calibrate on and measure: give a data root")


FORMAT = Format(name="onnx_int8", file="model.int8.onnx", rank=50, write=write, check=check, refuse=refuse)
