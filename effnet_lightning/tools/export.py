"""Export a trained network for deployment: ONNX, TorchScript and safetensors, plus a JSON file
with the class names and preprocessing, and on request a folder in timm's Hugging Face Hub
layout. Every file is loaded back and its logits compared with the PyTorch model's before the
export counts as done.

    python cli.py export                                  # best checkpoint of the latest fit
    python cli.py export --ckpt_path runs/.../last.ckpt --output_dir deploy/ --formats [onnx]
    python cli.py export --formats [hub] --push_to me/my-effnet   # hub/ folder, uploaded

The exported networks take float32 NCHW images, already resized, cropped and normalised as
`preprocessing` in the JSON says, and return logits (any batch size).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from effnet_lightning.models import hub
from effnet_lightning.models.factory import create_model

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")  # the default
ALL_FORMATS: tuple[str, ...] = (*FORMATS, "hub", "onnx_int8")


@dataclass(frozen=True)
class Int8Check:
    """What INT8 export calibrates on and is measured against: images under the evaluation
    transform, and the largest allowed top-1 drop (in points) on the validation images."""

    calibration: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    max_drop: float = 1.0


def _reference_input(channels: int, size: int, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def export_onnx(model, example: torch.Tensor, path: Path, opset: int | None):
    """`model` to an ONNX file (dynamic batch size, input "images", output "logits"); returns a
    function that runs the file with onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install onnx onnxscript onnxruntime"
        ) from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            opset_version=opset,
            verbose=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _export_torchscript(model, example: torch.Tensor, path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, still what many servers load
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return loaded


def _export_safetensors(model, path: Path, variant: str, num_classes: int, build_options: dict):
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"variant": variant, "num_classes": str(num_classes)})
    # Load it back the way a user would.
    return create_model(variant, num_classes=num_classes, weights=str(path), **build_options).eval()


def _onnx_logits(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.cat([torch.from_numpy(session.run(None, {"images": b.numpy()})[0]) for b in images.split(32)])


def quantize_onnx_int8(fp32: Path, path: Path, check: Int8Check) -> dict:
    """Static INT8 quantization of the fp32 ONNX file (QDQ, per-channel int8 weights, uint8
    activations, min-max calibration), measured on the validation images; raises ValueError
    when top-1 drops by more than `check.max_drop` points."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(check.calibration.split(16))

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
    full, int8 = _onnx_logits(fp32, check.images), _onnx_logits(path, check.images)
    quality = {
        "calibration_images": len(check.calibration),
        "images": len(check.images),
        "top1_agreement": (full.argmax(1) == int8.argmax(1)).float().mean().item(),
        "fp32_accuracy": (full.argmax(1) == check.labels).float().mean().item(),
        "int8_accuracy": (int8.argmax(1) == check.labels).float().mean().item(),
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


def _export_hub(model, folder: Path, class_names: list[str], card: str):
    """The hub folder, loaded back by this project and, where timm is installed, by timm; the
    returned network gives the larger of the two differences."""
    hub.write_folder(model, folder, class_names, card)
    ours = create_model(weights=folder).eval()
    try:
        import timm
    except ImportError:
        print("export: hub         (timm is not installed here: checked with this project's loader only)")
        return ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()

    def farther(x):  # of the two loaders' logits, those farther from the model's
        expected, a, b = model(x), ours(x), theirs(x)
        return a if (a - expected).abs().max() >= (b - expected).abs().max() else b

    return farther


def check_formats(formats) -> None:
    """A one-line error for an unknown or missing format name."""
    unknown = set(formats) - set(ALL_FORMATS)
    if unknown or not formats:
        what = f"unknown export formats {sorted(unknown)}" if unknown else "no export format given"
        raise ValueError(f"{what}: choose from {', '.join(ALL_FORMATS)}")


def export_model(
    model: torch.nn.Module,
    output_dir: str | Path,
    *,
    class_names: list[str],
    formats: list[str] | tuple[str, ...] = FORMATS,
    tolerance: float = 1e-4,
    opset: int | None = None,
    source: str | None = None,
    evaluation: dict[str, str] | None = None,
    hub_repo: str | None = None,
    int8: Int8Check | None = None,
) -> dict:
    """Write the chosen formats and model.json into output_dir (other files there stay); returns
    the JSON's content. The variant, preprocessing and build options come from the network's
    `provenance`; `evaluation` ({stage: report markdown}) and `hub_repo` (where it will be
    pushed) go into the hub format's model card; `int8` is what the onnx_int8 format needs.
    Raises ValueError, writing nothing, when a reloaded export's logits differ by more than
    `tolerance`, or when the hub format is asked of a network timm cannot build."""
    check_formats(formats)
    if "hub" in formats:
        hub.timm_architecture(model)  # refused before anything is exported
    if "onnx_int8" in formats and int8 is None:
        raise ValueError("the onnx_int8 format needs images to calibrate on and measure: give a data root")
    out = Path(output_dir).expanduser()
    # Written into a hidden side folder and moved into output_dir file by file once every check
    # has passed: a failed export replaces nothing, and other files in output_dir are left alone.
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".export-partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        info = _export_into(
            work, out, model, class_names, formats, tolerance, opset, source, (evaluation or {}, hub_repo), int8
        )
        for name in [*info["files"].values(), "model.json"]:
            if (out / name).is_dir():  # a folder (the hub format) replaces the last export's
                shutil.rmtree(out / name)
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"export: done, {len(info['files'])} formats in {out} (class names and preprocessing in {out / 'model.json'})"
    )
    return info


def _export_into(work, out, model, class_names, formats, tolerance, opset, source, card_facts, int8):
    model = model.float().eval().to(device="cpu", memory_format=torch.contiguous_format)
    variant, provenance = model.variant.name, model.provenance
    preprocessing, build_options = provenance.preprocessing.to_dict(), provenance.build.changes()
    size, channels = preprocessing["crop_size"], provenance.build.in_channels
    # checked on another batch size than the traced one
    example, check = _reference_input(channels, size, 2, 0), _reference_input(channels, size, 3, 1)
    with torch.no_grad():
        expected = model(check)
    files, diffs, quality = {}, {}, {}
    for fmt in formats:
        if fmt == "onnx_int8":
            fp32 = work / "model.onnx" if "onnx" in files else work / ".fp32.onnx"
            if not fp32.exists():
                export_onnx(model, example, fp32, opset)
            quality = quantize_onnx_int8(fp32, work / "model.int8.onnx", int8)
            files[fmt] = "model.int8.onnx"
            continue
        if fmt == "onnx":
            path = work / "model.onnx"
            run = export_onnx(model, example, path, opset)
        elif fmt == "torchscript":
            path = work / "model.torchscript.pt"
            run = _export_torchscript(model, example, path)
        elif fmt == "safetensors":
            path = work / "model.safetensors"
            run = _export_safetensors(model, path, variant, len(class_names), build_options)
        else:
            path = work / "hub"
            card = hub.model_card(hub.hub_config(model, class_names), source, *card_facts)
            run = _export_hub(model, path, class_names, card)
        with torch.no_grad():
            diff = (run(check) - expected).abs().max().item()
        files[fmt], diffs[fmt] = path.name, diff
        print(f"export: {fmt:<11} {out / path.name}  max |logit difference| vs PyTorch {diff:.2e}", flush=True)
        if not diff <= tolerance:
            raise ValueError(
                f"the {fmt} export gives logits {diff:.2e} away from PyTorch's (tolerance {tolerance:g}): "
                f"nothing was written to {out}; re-run with EFFNET_DEBUG=1 and report it"
            )
    info = {
        "variant": variant,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": preprocessing,
        "model_options": build_options,
        "input": {
            "name": "images",
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "note": "RGB, resized, centre-cropped and normalised as in preprocessing",
        },
        "output": {"name": "logits", "shape": ["batch", len(class_names)]},
        "files": files,
        "max_abs_logit_difference": diffs,
        **({"int8": quality} if quality else {}),
        "source": source,
    }
    (work / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
