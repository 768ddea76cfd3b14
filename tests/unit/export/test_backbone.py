import json

import onnxruntime
import pytest
import torch

from effnet_lightning import create_model
from effnet_lightning.export.backbone import export_backbone


def test_a_backbone_exports_to_onnx_with_one_named_output_per_level_and_the_same_maps(tmp_path):
    torch.manual_seed(0)
    backbone = create_model("b0", features_only=True, out_indices=(1, 3, 4), feature_location="expansion").eval()
    info = export_backbone(backbone, tmp_path)
    assert info == json.loads((tmp_path / "backbone.json").read_text())
    assert [(o["name"], o["channels"], o["reduction"]) for o in info["outputs"]] == [
        ("features_r4", 144, 4),
        ("features_r16", 672, 16),
        ("features_r32", 1152, 32),
    ]
    assert info["input"]["shape"] == ["batch", 3, "height", "width"] and info["feature_location"] == "expansion"
    session = onnxruntime.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["features_r4", "features_r16", "features_r32"]
    images = torch.randn(3, 3, 72, 104)  # another batch size and shape than the export's
    with torch.no_grad():
        expected = backbone(images)
    got = session.run(None, {"images": images.numpy()})
    for theirs, ours, reduction in zip(got, expected, (4, 16, 32), strict=True):
        assert theirs.shape == tuple(ours.shape) and theirs.shape[2:] == (-(-72 // reduction), -(-104 // reduction))
        assert torch.from_numpy(theirs) == pytest.approx(ours, abs=1e-4 * max(1.0, float(ours.abs().max())))
    print(f"backbone.onnx: max |difference| {info['max_abs_difference']:.1e} at export")
