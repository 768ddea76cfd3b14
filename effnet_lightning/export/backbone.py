"""A backbone (`create_model(..., features_only=True)`) to ONNX: `backbone.onnx` with one named
output per level and `backbone.json` saying what each is, checked through onnxruntime.

    from effnet_lightning import create_model
    from effnet_lightning.export.backbone import export_backbone

    backbone = create_model("lite0", weights="imagenet", features_only=True, out_indices=(2, 3, 4))
    info = export_backbone(backbone, "deploy/backbone")

The file takes float32 NCHW images of any batch size, height and width (preprocessed as
`preprocessing` says) and returns the maps `features_r8`, `features_r16`, `features_r32`, ...:
the level's reduction in its name, its channels in backbone.json. The `export` command exports
classifiers; this function is the way to export a backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from effnet_lightning.export.onnx import export_onnx
from effnet_lightning.export.runtime import onnx_session
from effnet_lightning.models.features import EfficientNetFeatures

# Each exported map may differ from PyTorch's by at most this, times the map's largest magnitude
# where that is above 1 (float32 kernels add in another order; deep maps run into the tens).
TOLERANCE = 1e-4


def output_names(backbone: EfficientNetFeatures) -> list[str]:
    return [f"features_r{reduction}" for reduction in backbone.feature_info.reduction()]


def export_backbone(backbone: EfficientNetFeatures, output_dir, opset: int | None = None) -> dict:
    """Write backbone.onnx and backbone.json into `output_dir`, having checked the file's maps
    against the PyTorch backbone's on random images at two sizes; returns backbone.json's content."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = backbone.eval()
    pre, channels = backbone.provenance.preprocessing, backbone.provenance.build.in_channels
    example = torch.randn(2, channels, pre.crop_size, pre.crop_size, generator=torch.Generator().manual_seed(0))
    names = output_names(backbone)
    export_onnx(backbone, example, out / "backbone.onnx", opset, tuple(names), dynamic_size=True)
    difference = check_backbone(backbone, out / "backbone.onnx", example)
    info = {
        "task": "features",
        "variant": backbone.variant.name,
        "feature_location": backbone.feature_location,
        "out_indices": list(backbone.out_indices),
        "preprocessing": pre.to_dict(),
        "model_options": backbone.provenance.build.changes(),
        "input": {
            "name": "images",
            "shape": ["batch", channels, "height", "width"],
            "dtype": "float32",
            "note": "RGB, normalised as in preprocessing; any height and width",
        },
        "outputs": [
            {"name": name, "channels": c, "reduction": r, "module": m}
            for name, c, r, m in zip(
                names,
                backbone.feature_info.channels(),
                backbone.feature_info.reduction(),
                backbone.feature_info.module_name(),
                strict=True,
            )
        ],
        "max_abs_difference": difference,
        "source": backbone.provenance.source,
    }
    (out / "backbone.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_backbone(backbone: EfficientNetFeatures, path: Path, example: torch.Tensor) -> float:
    """The largest difference between the file's maps and PyTorch's, on `example` and on the
    same images at another size (the file's height and width are dynamic); an error above
    TOLERANCE (relative to maps larger than 1)."""
    session = onnx_session(path)
    other = torch.nn.functional.interpolate(example, scale_factor=0.75, mode="bilinear")
    worst = 0.0
    for images in (example, other):
        with torch.no_grad():
            expected = backbone(images)
        for got, want in zip(session.run(None, {"images": images.numpy()}), expected, strict=True):
            difference = float((torch.from_numpy(got) - want).abs().max())
            if difference > TOLERANCE * max(1.0, float(want.abs().max())):
                raise ValueError(f"{path}: a map differs from PyTorch's by {difference:.2e}, more than allowed")
            worst = max(worst, difference)
    return worst
